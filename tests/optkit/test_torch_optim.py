"""The torch-optimizer adapter on training tasks: equality with hand-written loops, schedule, trace, memory, bench.

(On smooth and finite-sum problems: tests/optkit/test_torch_optim_problems.py.)"""

import importlib.util
import math

import numpy as np
import pytest

import optkit
from optkit.bench import read_csv, run_benchmark
from optkit.report import make_report
from optkit.training import TrainingTask

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

SPEC = "llm/llama-micro:batch=2,seq=16,n_val_batches=2,max_bytes=20000"
TRACE = ("loss", "tokens", "tokens_per_s", "lr", "peak_mem_mb", "opt_state_mb", "refresh_s", "val_loss", "val_ppl")


@pytest.fixture(scope="module")
def task():
    return optkit.get_problem(SPEC)


def assert_same_parameters(a, b, rtol=0.0):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=rtol, atol=rtol * 1e-2, err_msg=name)


def hand_written_adamw(task, steps, accumulation, lr, weight_decay):
    model = task.make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batches = task.train_batches()
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accumulation):
            batch = next(batches)
            (model(input_ids=batch, labels=batch).loss / accumulation).backward()
        opt.step()
    return model


@pytest.mark.parametrize("accumulation", [1, 2])
def test_adamw_equals_a_hand_written_torch_loop(task, accumulation):
    options = dict(lr=3e-3, weight_decay=0.1, schedule="constant", warmup=0.0, accumulation_steps=accumulation)
    result = optkit.solve(task, "adamw", max_iter=3, **options)
    expected = hand_written_adamw(task, 3, accumulation, lr=3e-3, weight_decay=0.1)
    # the same operations in the same order on the CPU: equal to the last bit
    assert_same_parameters(result.x, expected)
    assert result.nit == 3 and result.counters == {"batches": 3 * accumulation, "tokens": 3 * accumulation * 32}


def test_thirty_adamw_steps_learn_the_bytes():
    task = optkit.get_problem("llm/llama-micro")  # batch 8, seq 32
    result = optkit.solve(task, "adamw", max_iter=30, lr=1e-2, eval_every=30)
    first, last = result.trace[0]["val_loss"], result.trace[-1]["val_loss"]
    # from ln 256 = 5.55 (uniform) to below 3.3 nats: past the byte frequencies alone (the
    # validation bytes' unigram entropy is 3.11 nats, their uniform code 5.55)
    assert first > 5.4 and last < 3.3
    assert result.status is optkit.Status.MAX_ITER and result.fun == last
    np.testing.assert_allclose(task.evaluate(result.x)["val_loss"], last, rtol=1e-12)


def test_schedule_trace_and_memory(task):
    result = optkit.solve(task, "adamw", max_iter=10, lr=2e-3, warmup=0.2, eval_every=4)
    trace = result.trace
    assert [row["iter"] for row in trace] == list(range(11))
    # warm-up over W = 2 steps, then cosine from 2e-3 to 2e-4 over the remaining 8
    expected = [0.5, 1.0] + [0.1 + 0.45 * (1 + math.cos(math.pi * (t - 2) / 8)) for t in range(2, 10)]
    np.testing.assert_allclose([row["lr"] for row in trace[1:]], 2e-3 * np.array(expected), rtol=1e-12)
    assert [row["iter"] for row in trace if "val_loss" in row] == [0, 4, 8, 10]
    assert all(set(TRACE) <= set(row) for row in trace[1:] if "val_loss" in row)
    assert [row["tokens"] for row in trace] == [32 * k for k in range(11)]
    assert "loss" not in trace[0] and all(row["tokens_per_s"] > 0 for row in trace[1:])
    assert all(row["refresh_s"] == 0.0 for row in trace)
    # CPU memory: parameters (4n bytes), then + gradients (4n) + AdamW's two moments (8n) and a
    # 4-byte step tensor per parameter tensor
    n, k = task.n, len(list(result.x.parameters()))
    np.testing.assert_allclose(trace[0]["peak_mem_mb"] * 2**20, 4 * n)
    np.testing.assert_allclose(trace[-1]["peak_mem_mb"] * 2**20, 16 * n + 4 * k)
    np.testing.assert_allclose(trace[-1]["opt_state_mb"] * 2**20, 8 * n + 4 * k)
    assert result.metrics["val_loss"] == trace[-1]["val_loss"] == result.fun


def test_interrupt_keeps_the_finished_steps(task):
    def stop(info):
        if info["iter"] == 2:
            raise KeyboardInterrupt

    result = optkit.solve(task, "adamw", max_iter=10, eval_every=100, callback=stop)
    assert result.status is optkit.Status.USER_STOPPED and result.nit == 2 and len(result.trace) == 3
    assert result.metrics["tokens"] == 64 and math.isfinite(result.metrics["val_loss"])
    assert all(p.grad is None for p in result.x.parameters())


def test_nonfinite_loss_stops_the_run():
    def nan_loss(model, batch):  # finite in validation (eval mode), NaN in training
        return model.weight.sum() * (float("nan") if model.training else 0.0)

    nan_task = TrainingTask(
        lambda: torch.nn.Linear(2, 2),
        lambda: iter(lambda: torch.zeros(1, 2), None),
        [torch.zeros(1, 2)],
        tokens_per_batch=2,
        loss_fn=nan_loss,
    )
    result = optkit.solve(nan_task, "adamw", max_iter=5)
    assert result.status is optkit.Status.NONFINITE and result.nit == 1 and math.isnan(result.trace[-1]["loss"])


def test_x0_is_copied(task):
    start = task.make_model()
    before = [p.detach().clone() for p in start.parameters()]
    result = optkit.solve(task, "adamw", x0=start, max_iter=1, warmup=0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, start.parameters()))
    assert not torch.equal(next(result.x.parameters()), before[0])
    with pytest.raises(ValueError, match="x0 must be a torch.nn.Module"):
        optkit.solve(task, "adamw", x0=np.zeros(3), max_iter=1)


def test_galore_recipes_project_and_time_refreshes(task):
    adamw = optkit.solve(task, "adamw", max_iter=3)
    ours = optkit.solve(task, "galore-adamw", max_iter=3, rank=8, update_proj_gap=2)
    ref = optkit.solve(task, "galore-torch", max_iter=3, rank=8, update_proj_gap=2)
    refresh = [row["refresh_s"] for row in ours.trace]
    assert refresh[0] == 0.0 and refresh[1] > 0 and refresh == sorted(refresh)
    assert all("refresh_s" not in row for row in ref.trace)  # the reference does not time its SVDs
    for result in (ours, ref):
        assert result.trace[-1]["opt_state_mb"] < 0.8 * adamw.trace[-1]["opt_state_mb"]
        assert math.isfinite(result.fun)


def test_layerwise_galore_equals_the_whole_model_step(task):
    options = dict(max_iter=4, rank=8, update_proj_gap=2, lr=5e-3, warmup=0.25)
    whole = optkit.solve(task, "galore-adamw", **options)
    layerwise = optkit.solve(task, "galore-adamw", layerwise=True, **options)
    # the schedule reaches every per-parameter optimizer through the wrapper's param groups
    assert_same_parameters(layerwise.x, whole.x, rtol=1e-6)
    assert layerwise.trace[-1]["peak_mem_mb"] < whole.trace[-1]["peak_mem_mb"]  # no gradients kept
    # the layer-wise refresh time is the sum over the per-parameter optimizers
    inner = layerwise.extras["optimizer"].inner_optimizers
    assert layerwise.trace[-1]["refresh_s"] == pytest.approx(sum(o.projector_refresh_seconds for o in inner))
    assert layerwise.trace[-1]["refresh_s"] > 0


def test_adamw8bit_quantises_the_moments(task):
    pytest.importorskip("bitsandbytes")
    adamw = optkit.solve(task, "adamw", max_iter=2)
    eight = optkit.solve(task, "adamw8bit", max_iter=2)
    assert eight.trace[-1]["opt_state_mb"] < 0.5 * adamw.trace[-1]["opt_state_mb"]
    assert math.isfinite(eight.fun)


@pytest.mark.parametrize("name", ["galore-adamw8bit", "galore-adafactor"])
def test_other_optkit_galore_recipes(task, name):
    if name == "galore-adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        assert "needs bitsandbytes" in optkit.get_solver(name).check(task)
        pytest.skip("bitsandbytes is not installed")
    result = optkit.solve(task, name, max_iter=2, rank=8)
    assert math.isfinite(result.fun) and result.trace[-1]["refresh_s"] > 0


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("adamw", {"lr": 0}, "lr must be a positive"),
        ("adamw", {"weight_decay": -1}, "weight_decay must be"),
        ("adamw", {"schedule": "linear"}, "schedule must be one of"),
        ("adamw", {"warmup": 1.5}, "warmup must be a fraction"),
        ("adamw", {"min_lr_ratio": 2}, "min_lr_ratio must be in"),
        ("adamw", {"grad_clip": 0}, "grad_clip must be a positive"),
        ("adamw", {"accumulation_steps": 0}, "accumulation_steps must be"),
        ("adamw", {"eval_every": 0}, "eval_every must be"),
        ("galore-torch", {"rank": 0}, "rank must be an integer >= 1"),
        ("galore-torch", {"proj_type": "diag"}, "proj_type must be one of"),
        ("galore-adamw", {"update_proj_gap": 0}, "update_proj_gap must be"),
        ("galore-adamw", {"scale": -1.0}, "scale must be a positive"),
        ("galore-adamw", {"proj": "qr"}, "proj must be one of"),
        ("galore-adamw", {"layerwise": 1}, "layerwise must be true or false"),
        ("galore-adamw", {"layerwise": True, "grad_clip": 1.0}, "grad_clip needs every gradient"),
    ],
)
def test_bad_options_name_them(name, options, match):
    with pytest.raises(ValueError, match=match):
        optkit.get_solver(name, **options)


def test_grad_clip_and_options_that_do_not_apply(task):
    result = optkit.solve(task, "adamw", max_iter=2, grad_clip=1e-3)
    assert math.isfinite(result.fun)
    for options in ({"tol": 1e-6}, {"batch_size": 8}, {"epochs": 1.0}):
        reason = optkit.get_solver("adamw", **options).check(task)
        assert f"{next(iter(options))} apply to smooth and finite-sum problems" in reason
    assert "accepts TrainingTask, SmoothProblem" in optkit.get_solver("adamw").check(
        optkit.get_problem("linear/poisson-2d", n=4)
    )


def test_bench_and_report(tmp_path):
    bench = run_benchmark(
        SPEC,
        "adamw,galore-torch@torch:rank=8",
        solver_options={"max_iter": 3, "eval_every": 2},
        out_dir=tmp_path,
        progress=False,
        warmup=False,
    )
    assert [row["status"] for row in bench.summary] == ["max_iter", "max_iter"]
    rows = read_csv(tmp_path / "results.csv")
    assert set(TRACE) <= set(rows[0])
    for solver in ("adamw", "galore-torch@torch:rank=8"):  # @torch: the task moved by TrainingTask.to
        mine = [r for r in rows if r["solver"] == solver]
        trace, final = [r for r in mine if not r["final"]], [r for r in mine if r["final"]]
        assert [r["iter"] for r in trace] == [0, 1, 2, 3] and [r["val_loss"] is None for r in trace] == [0, 1, 0, 0]
        # the benchmark's final measure is the same computation as the trace's last validation
        np.testing.assert_allclose(final[0]["val_loss"], trace[-1]["val_loss"], rtol=1e-12)
    index = make_report(tmp_path)
    assert index.is_file() and any(tmp_path.glob("conv_*_loss.png"))

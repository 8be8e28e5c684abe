"""Q-GaLore: equal to GaLore without quantisation, the INT8 step, bit-exact resume, layer-wise stepping under
accumulation, DDP (two gloo ranks), the q-galore recipe and the official package's baseline."""

import functools
import importlib.util

import pytest

torch = pytest.importorskip("torch")

import galore_cases
from distributed_cases import run_ranks, save_rank

import optkit
from optkit.quantization import dequantize, quantize
from solvers.lowrank import (
    GaLoreAdamW,
    GaLoreAdamW8bit,
    LayerwiseOptimizer,
    QGaLoreAdamW,
    QGaLoreAdamW8bit,
    galore_param_groups,
    q_galore_param_groups,
    quantize_linear_layers,
)
from solvers.lowrank.memory import estimate_memory, measure_memory

HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
needs_bitsandbytes = pytest.mark.skipif(not HAS_BITSANDBYTES, reason="needs bitsandbytes")

N_IN, HIDDEN, N_OUT, HEAD = 6, 10, 8, 3
WEIGHT_GROUP = 16  # attn_proj: 60 weights, 4 groups; mlp_out: 80 weights, 5 groups
LR = 1e-2
# attn_proj (10 x 6) is projected on the right, rank 4 of 6: two 4-dimensional subspaces of R^6 share at least 2
# dimensions, so every similarity is >= 0.5 > 0.4 and the adaptive gap must double once its window of 5 is full
QGALORE = {"rank": 4, "update_proj_gap": 1, "proj_group_size": 8}


def _int8_block(seed=0, dtype=torch.float32):
    model = galore_cases.Block(N_IN, HIDDEN, N_OUT, head=HEAD, seed=seed).to(dtype)
    quantize_linear_layers(model, group_size=WEIGHT_GROUP)
    return model


def _adamw8bit(cls, params, **options):
    # min_8bit_size=0: every moment of these small models is 8-bit
    return cls(params, lr=LR, weight_decay=0.1, min_8bit_size=0, **options)


@pytest.mark.parametrize("rank", [4, 16], ids=["low-rank", "full-rank"])
@pytest.mark.parametrize(
    "qgalore, galore",
    [
        (QGaLoreAdamW, GaLoreAdamW),
        pytest.param(
            functools.partial(_adamw8bit, QGaLoreAdamW8bit),
            functools.partial(_adamw8bit, GaLoreAdamW8bit),
            marks=needs_bitsandbytes,
        ),
    ],
    ids=["adamw", "adamw8bit"],
)
def test_without_quantisation_it_is_galore(qgalore, galore, rank):
    """Float weights, a dense basis and a fixed gap: the same steps as the GaLore optimizer, bit for bit."""
    data = galore_cases.batches(6, N_IN, HEAD)
    options = {"rank": rank, "update_proj_gap": 2, "proj_bits": None, "refresh": "fixed"}
    runs = []
    for cls in (qgalore, galore):
        model = galore_cases.Block(N_IN, HIDDEN, N_OUT, head=HEAD)
        galore_cases.train(model, cls(galore_param_groups(model, **options)), data)
        runs.append(list(model.parameters()))
    for p, q in zip(*runs, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_at_full_rank_without_quantisation_it_is_adamw():
    data = galore_cases.batches(6, N_IN, HEAD)
    model, reference = (galore_cases.Block(N_IN, HIDDEN, N_OUT, head=HEAD) for _ in range(2))
    options = {"rank": 16, "proj_bits": None, "refresh": "fixed"}
    galore_cases.train(model, QGaLoreAdamW(galore_param_groups(model, **options), lr=LR, weight_decay=0.1), data)
    galore_cases.train(reference, torch.optim.AdamW(reference.parameters(), lr=LR, weight_decay=0.1), data)
    # the same update; AdamW forms its denominator and bias corrections in another order (float32 rounding)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("proj_bits", [None, 4])
def test_an_int8_step_is_the_galore_step_on_the_dequantised_weight_requantised(proj_bits):
    """Nearest rounding: QGaLoreAdamW's new codes are the quantised GaLoreAdamW step of the dequantised weight."""
    model = _int8_block()
    layer = model.attn_proj
    weight = torch.nn.Parameter(layer.dequantized_weight())
    options = {**QGALORE, "proj_bits": proj_bits, "refresh": "fixed"}
    opt = QGaLoreAdamW([{"params": [layer.weight_codes], **options}], lr=LR, weight_decay=0.1, stochastic_round=False)
    reference = GaLoreAdamW([{"params": [weight], **options}], lr=LR, weight_decay=0.1)
    for step in range(3):
        grad = torch.randn(HIDDEN, N_IN, generator=torch.Generator().manual_seed(step))
        layer.weight_grad, weight.grad = grad.clone(), grad.clone()
        opt.step()
        reference.step()
        with torch.no_grad():
            expected = quantize(weight, 8, WEIGHT_GROUP)
            weight.copy_(dequantize(expected, weight.shape, 8, WEIGHT_GROUP))
        torch.testing.assert_close(layer.weight_codes, expected.codes, rtol=0, atol=0)
        torch.testing.assert_close(layer.weight_scale, expected.scale, rtol=0, atol=0)
        torch.testing.assert_close(layer.weight_offset, expected.offset, rtol=0, atol=0)


def test_zero_grad_clears_the_int8_gradients():
    model = _int8_block()
    opt = QGaLoreAdamW(q_galore_param_groups(model, **QGALORE), lr=LR)
    model(torch.randn(4, N_IN)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert model.attn_proj.weight_grad is not None and not model.attn_proj.weight_grad.any()
    opt.zero_grad()
    assert model.attn_proj.weight_grad is None and model.mlp_out.weight_grad is None


def test_bad_options_are_refused():
    model = _int8_block()
    with pytest.raises(TypeError, match="stochastic_round"):
        QGaLoreAdamW(q_galore_param_groups(model, **QGALORE), stochastic_round=1)
    with pytest.raises(ValueError, match="quant_seed"):
        QGaLoreAdamW(q_galore_param_groups(model, **QGALORE), quant_seed=-1)
    with pytest.raises(ValueError, match="weight_codes of an Int8Linear"):
        QGaLoreAdamW([torch.zeros(3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="no Int8Linear"):
        q_galore_param_groups(galore_cases.Block(N_IN, HIDDEN, N_OUT), rank=2)


@needs_bitsandbytes
def test_resume_is_bit_exact(tmp_path):
    """INT8 weights, INT4 bases, the adaptive gap and the stochastic rounding's stream all come back."""

    def build():
        model = _int8_block()
        return model, _adamw8bit(QGaLoreAdamW8bit, q_galore_param_groups(model, **QGALORE))

    def after_load(model, opt):
        state = opt.state[model.attn_proj.weight_codes]
        assert state["projector"]["gap"] == 2  # doubled at the sixth refresh, before the checkpoint
        assert state["projector"]["basis_codes"].dtype == torch.uint8
        assert state["rounding_seed"] == 5  # quant_seed 0, and attn_proj's codes come after the 5 float parameters

    data = galore_cases.batches(10, N_IN, HEAD)
    galore_cases.assert_resume_is_exact(build, data, tmp_path / "q_galore.pt", split=7, after_load=after_load)


def _accumulated_run(model, opt, data, k):
    """``len(data) // k`` optimizer steps over ``k`` micro-batches each, with a warm-up schedule on ``opt``."""
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: (step + 1) / 3)
    for start in range(0, len(data), k):
        for x, y in data[start : start + k]:
            (torch.nn.functional.mse_loss(model(x), y) / k).backward()
        opt.step()
        schedule.step()
        opt.zero_grad()


@needs_bitsandbytes
def test_layerwise_with_accumulation_equals_the_plain_optimizer():
    k = 2
    data = galore_cases.batches(6, N_IN, HEAD)
    plain, layerwise = _int8_block(), _int8_block()
    start = [p.detach().clone() for p in plain.parameters()]
    _accumulated_run(plain, _adamw8bit(QGaLoreAdamW8bit, q_galore_param_groups(plain, **QGALORE)), data, k)
    factory = functools.partial(_adamw8bit, QGaLoreAdamW8bit)
    opt = LayerwiseOptimizer(q_galore_param_groups(layerwise, **QGALORE), factory, accumulation_steps=k)
    _accumulated_run(layerwise, opt, data, k)
    for p, q, p0 in zip(plain.parameters(), layerwise.parameters(), start, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
        assert not torch.equal(q, p0)  # every parameter moved: codes, scales, minima, biases, norm, head
    assert layerwise.attn_proj.weight_grad is None  # freed once stepped


WORLD, STEPS, BATCH = 2, 3, 16
# Float64 models: DDP averages two half-batch gradients, the single process differentiates one mean, so gradients
# differ by rounding (~1e-16 relative); the float parameters follow within 1e-10 (as in test_distributed_family).
# The INT8 weights are re-quantised in float32: a code changes only when a difference of ~1e-16 straddles a
# rounding boundary (probability ~1e-9 per value), so they are compared exactly.
RTOL, ATOL = 1e-10, 1e-12
# (layer-wise, gradient_as_bucket_view): the plain optimizer reading .grad copies, layer-wise steps on bucket views
CONFIGS = ((False, False), (True, True))


def _ddp_optimizer(model, layerwise):
    groups = q_galore_param_groups(model, **QGALORE)
    if layerwise:
        return LayerwiseOptimizer(groups, functools.partial(QGaLoreAdamW, lr=LR, weight_decay=0.1))
    return QGaLoreAdamW(groups, lr=LR, weight_decay=0.1)


def _ddp_batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, N_IN, generator=generator, dtype=torch.float64)
    return x, torch.randn(BATCH, HEAD, generator=generator, dtype=torch.float64)


def _ddp_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for layerwise, bucket_view in CONFIGS:
            model = _int8_block(dtype=torch.float64)
            ddp = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=bucket_view)
            opt = _ddp_optimizer(model, layerwise)
            if layerwise:
                opt.attach(ddp)
            for step in range(STEPS):
                x, y = _ddp_batch(step)
                torch.nn.functional.mse_loss(ddp(x[rows]), y[rows]).backward()
                opt.step()
                opt.zero_grad()
            results[layerwise, bucket_view] = [p.detach().clone() for p in model.parameters()]
            del ddp, opt
        save_rank(results, out_dir, rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs gloo"
)
def test_ddp_ranks_are_bit_equal_and_equal_one_process(tmp_path):
    runs = run_ranks(_ddp_worker, tmp_path, WORLD)
    start = list(_int8_block(dtype=torch.float64).parameters())
    for layerwise, bucket_view in CONFIGS:
        model = _int8_block(dtype=torch.float64)
        opt = _ddp_optimizer(model, layerwise)
        for step in range(STEPS):
            x, y = _ddp_batch(step)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        first, second = (run[layerwise, bucket_view] for run in runs)
        int8 = {
            id(t) for m in (model.attn_proj, model.mlp_out) for t in (m.weight_codes, m.weight_scale, m.weight_offset)
        }
        for p, q, expected, p0 in zip(first, second, model.parameters(), start, strict=True):
            assert torch.equal(p, q)
            tol = {"rtol": 0, "atol": 0} if id(expected) in int8 else {"rtol": RTOL, "atol": ATOL}
            torch.testing.assert_close(p, expected.detach(), **tol)
            assert not torch.equal(p, p0)


def _tiny_task():
    """A training task on a Block: seeded input batches, the target a fixed function of the input."""

    def batches():
        generator = torch.Generator().manual_seed(0)
        while True:
            yield torch.randn(24, N_IN, generator=generator)

    def model():
        return galore_cases.Block(N_IN, HIDDEN, N_OUT, head=HEAD)

    return optkit.TrainingTask(
        model,
        batches,
        [torch.ones(24, N_IN)],
        tokens_per_batch=24,
        loss_fn=lambda model, x: torch.nn.functional.mse_loss(model(x), torch.sin(x[:, :HEAD])),
        name="tiny/q-galore",
    )


@needs_bitsandbytes
@pytest.mark.parametrize("layerwise", [False, True], ids=["plain", "layerwise"])
def test_recipe_trains_a_task_and_its_memory_counts_the_int8_weights(layerwise):
    solver = optkit.get_solver(
        "q-galore",
        rank=4,
        update_proj_gap=2,
        weight_group_size=WEIGHT_GROUP,
        proj_group_size=8,
        max_iter=4,
        eval_every=4,
        lr=1e-2,
        layerwise=layerwise,
        accumulation_steps=2,
    )
    task = _tiny_task()
    start = task.make_model()
    result = solver.solve(task)
    assert result.status.name == "MAX_ITER" and result.nit == 4
    model, opt = result.x, result.extras["optimizer"]
    assert [type(model.attn_proj).__name__, type(model.mlp_out).__name__, type(model.lm_head).__name__] == [
        "Int8Linear",
        "Int8Linear",
        "Linear",
    ]
    for name in ("attn_proj", "mlp_out"):
        assert not torch.equal(getattr(model, name).dequantized_weight(), getattr(start, name).weight)
    memory = measure_memory(model, opt, layerwise=layerwise)
    float_bytes = 4 * (10 + 2 * 10 + 8 + 3 * 8)  # biases, norm, head
    int8_bytes = (4 + 5) * (WEIGHT_GROUP + 8)  # a byte per padded code, a float32 scale and minimum per group
    assert memory["weights"] == float_bytes + int8_bytes
    assert memory["gradients"] == (4 * 80 if layerwise else 4 * (60 + 80) + float_bytes)  # layer-wise: the largest
    assert memory["projector"] > 0 and memory["optimizer_states"] > 0


@needs_bitsandbytes
@pytest.mark.parametrize("layerwise", [False, True], ids=["plain", "layerwise"])
def test_memory_estimate_from_shapes_equals_the_measured_bytes(layerwise):
    """estimate_memory(weight_bits=8) on the float model = measure_memory on its quantised twin after a step."""
    options = {**QGALORE, "proj_bits": 4}
    estimate = estimate_memory(
        galore_param_groups(galore_cases.Block(N_IN, HIDDEN, N_OUT, head=HEAD), **options),
        optimizer="galore-adamw8bit",
        layerwise=layerwise,
        weight_bits=8,
        weight_group_size=WEIGHT_GROUP,
    )
    model = _int8_block()
    opt = QGaLoreAdamW8bit(q_galore_param_groups(model, **options))  # moments under 4096 values stay float32
    x, y = galore_cases.batches(1, N_IN, HEAD)[0]
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert estimate == measure_memory(model, opt, layerwise=layerwise)
    with pytest.raises(ValueError, match="weight_bits"):
        estimate_memory([], weight_bits=4)


def test_recipe_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="weight_bits must be 8"):
        optkit.get_solver("q-galore", weight_bits=4)
    with pytest.raises(ValueError, match="grad_clip"):
        optkit.get_solver("q-galore", grad_clip=1.0)
    reason = optkit.get_solver("q-galore").check(optkit.get_problem("ml/least-squares", m=20, n=5))
    assert reason is not None


def test_official_package_runs_three_steps_or_says_why_not():
    solver = optkit.get_solver("q-galore-torch", rank=4, update_proj_gap=2, max_iter=3, eval_every=3)
    task = optkit.get_problem("llm/llama-micro")  # its weights' sizes are multiples of the reference's group 256
    reason = solver.check(task)
    if reason is not None:
        assert "needs" in reason
        pytest.skip(reason)
    result = solver.solve(task)
    assert result.status.name == "MAX_ITER" and result.nit == 3

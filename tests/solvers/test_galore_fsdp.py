"""GaLore optimizers on FSDP2-sharded parameters (2 gloo processes): equal to the unsharded optimizer,
exact DCP resume, refusals (every scenario in one spawn, to keep the file fast); and the torchrun
example resumed from its DCP checkpoint."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_cases import run_ranks, save_rank

from solvers.lowrank import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, LayerwiseOptimizer

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs gloo"
)

WORLD = 2
STEPS = 4
BATCH = 8  # each rank gets BATCH // WORLD rows of the global batch

# name -> optimizer factory over param groups; update_proj_gap=2 refreshes the bases at steps 0 and 2
CASES = {
    f"adamw-{proj}": functools.partial(GaLoreAdamW, lr=1e-2, weight_decay=0.1, proj=proj, update_proj_gap=2)
    for proj in ("svd", "randomized", "dct")
}
CASES["adamw-rotate-error-feedback"] = functools.partial(
    GaLoreAdamW, lr=1e-2, moments="rotate", error_feedback=True, update_proj_gap=2
)
CASES["adamw-int4-basis"] = functools.partial(GaLoreAdamW, lr=1e-2, proj_bits=4, proj_group_size=4, update_proj_gap=2)
CASES["adamw-adaptive"] = functools.partial(GaLoreAdamW, lr=1e-2, refresh="adaptive", update_proj_gap=1)
CASES["adafactor-svd"] = functools.partial(
    GaLoreAdafactor, lr=1e-2, beta1=0.9, weight_decay=0.1, scale_parameter=True, clip_threshold=0.05, update_proj_gap=2
)


class _Net(torch.nn.Module):
    """A tall weight (10, 6: right side), a wide one with an odd row count (5, 10: left side, rows split 3 + 2),
    a 1-D norm weight in the projected group, and a full-rank head (its (1, 5) weight leaves rank 1 no row)."""

    def __init__(self) -> None:
        super().__init__()
        self.tall = torch.nn.Linear(6, 10, bias=False)
        self.norm = torch.nn.LayerNorm(10)
        self.wide = torch.nn.Linear(10, 5, bias=False)
        self.head = torch.nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.wide(self.norm(torch.tanh(self.tall(x))))))


def _model() -> _Net:
    torch.manual_seed(0)
    return _Net()


def _groups(model: _Net) -> list[dict]:
    projected = [model.tall.weight, model.norm.weight, model.wide.weight]
    rest = [model.norm.bias, model.head.weight, model.head.bias]
    return [{"params": projected, "rank": 2, "scale": 0.5}, {"params": rest}]


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 6, generator=generator), torch.randn(BATCH, 1, generator=generator)


def _train(model, optimizer, steps, rank=None, first=0):
    """``steps`` steps from step ``first``; with ``rank``, on that rank's half of each global batch."""
    for step in range(first, first + steps):
        x, y = _batch(step)
        if rank is not None:
            x, y = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def _sharded(factory):
    from torch.distributed.fsdp import fully_shard

    model = _model()
    fully_shard(model)
    return model, factory(_groups(model))


def _full(model) -> list[torch.Tensor]:
    return [p.full_tensor().detach().clone() for p in model.parameters()]


def _check_refusals(mesh) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    model, _ = _sharded(CASES["adamw-svd"])
    with pytest.raises(ValueError, match="plain optimizer on the sharded parameters"):
        LayerwiseOptimizer(model.parameters(), functools.partial(GaLoreAdamW, lr=1e-3))
    with pytest.raises(ValueError, match="use GaLoreAdamW .* under FSDP2, or GaLoreAdamW8bit under Distributed"):
        GaLoreAdamW8bit(_groups(model))
    columns = torch.nn.Parameter(distribute_tensor(torch.ones(4, 4), mesh, [Shard(1)]))
    with pytest.raises(ValueError, match=r"placements \(Shard\(dim=1\),\) on a 1-D mesh"):
        GaLoreAdamW([columns], rank=2)


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor

        results = {}
        for name, factory in CASES.items():
            model, optimizer = _sharded(factory)
            _train(model, optimizer, STEPS, rank)
            results[name] = _full(model)
        # the state of sharded quantities is DTensors of the weight's placement; the left side's is replicated
        model, optimizer = _sharded(CASES["adamw-svd"])
        _train(model, optimizer, 1, rank)
        results["state-types"] = [
            [type(optimizer.state[p][key]).__name__ for key in ("exp_avg", "exp_avg_sq")]
            for p in (model.tall.weight, model.wide.weight, model.norm.weight)
        ]
        assert all(isinstance(optimizer.state[p]["exp_avg"], DTensor) for p in model.head.parameters())

        # DCP: save after 2 steps, load into a fresh model and optimizer, 2 more steps
        model, optimizer = _sharded(CASES["adamw-rotate-error-feedback"])
        _train(model, optimizer, 2, rank)
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=out_dir / "dcp")
        model, optimizer = _sharded(CASES["adamw-rotate-error-feedback"])
        model_state, optim_state = get_state_dict(model, optimizer)
        loaded = {"model": model_state, "optim": optim_state}
        dcp.load(loaded, checkpoint_id=out_dir / "dcp")
        set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
        _train(model, optimizer, 2, rank, first=2)
        results["resumed"] = _full(model)

        _check_refusals(init_device_mesh("cpu", (WORLD,)))
        save_rank(results, out_dir, rank)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    return run_ranks(_worker, tmp_path_factory.mktemp("fsdp"), WORLD)


@pytest.mark.parametrize("name", sorted(CASES))
def test_sharded_steps_equal_unsharded_steps(fsdp_results, name):
    model = _model()
    _train(model, CASES[name](_groups(model)), STEPS)
    for gathered, expected in zip(fsdp_results[0][name], model.parameters()):
        # FSDP2's reduce-scatter and the left side's all-reduce sum in another order than one
        # process does: float32 rounding (~1e-7 relative), slightly amplified by 4 steps of Adam's
        # division by the gradient's magnitude and by the refreshed bases
        torch.testing.assert_close(gathered, expected.detach(), rtol=1e-5, atol=1e-6)
    for p0, p1 in zip(fsdp_results[0][name], fsdp_results[1][name]):
        torch.testing.assert_close(p0, p1, rtol=0, atol=0)


def test_sharded_state_is_dtensors_of_the_weights_placement_except_on_the_left_side(fsdp_results):
    # tall (right side) and the 1-D norm weight are sharded; wide (left side) moments (r, n) are replicated
    expected = [["DTensor", "DTensor"], ["Tensor", "Tensor"], ["DTensor", "DTensor"]]
    assert fsdp_results[0]["state-types"] == expected


def test_dcp_resume_after_two_steps_equals_four_uninterrupted_steps(fsdp_results):
    for rank_results in fsdp_results:
        for resumed, straight in zip(rank_results["resumed"], rank_results["adamw-rotate-error-feedback"]):
            torch.testing.assert_close(resumed, straight, rtol=0, atol=0)


def _torchrun_example(*args: str) -> str:
    script = Path(__file__).resolve().parents[2] / "examples" / "torchrun_pretrain_llama.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), str(script), *args]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_torchrun_example_resumed_from_its_dcp_checkpoint_ends_at_the_uninterrupted_loss(tmp_path):
    pytest.importorskip("transformers")
    common = ["--strategy", "fsdp2", "--size", "micro", "--seq", "32", "--rank", "8", "--gap", "2", "--steps", "4"]
    common += ["--eval-every", "4", "--proj", "svd"]
    straight = _torchrun_example(*common)
    checkpoint = ["--checkpoint", str(tmp_path / "run.dcp"), "--save-every", "1"]
    first_part = _torchrun_example(*common, *checkpoint, "--stop-after", "3")  # past the refresh at step 2
    assert "step 4:" not in first_part
    resumed = _torchrun_example(*common, *checkpoint)
    final = [line for line in straight.splitlines() if line.startswith("step 4:")]
    # the resumed run is the same computation as the uninterrupted one: the printed loss agrees to every digit
    assert final and final == [line for line in resumed.splitlines() if line.startswith("step 4:")]
    assert float(final[0].split()[-1]) < 5.0  # ln 256 = 5.55 untrained

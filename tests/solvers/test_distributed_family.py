"""Every optimizer of the low-rank/curvature family under DDP: two gloo ranks, each on half of every batch, end
bit-equal to each other and equal, up to the all-reduce's rounding, to one process on the whole batch."""

import functools
import importlib.util
import itertools

import pytest

torch = pytest.importorskip("torch")

import galore_cases
from distributed_cases import run_ranks, save_rank

from solvers.curvature import MFAC
from solvers.lowrank import (
    GaLoreAdafactor,
    GaLoreAdamW,
    GaLoreAdamW8bit,
    LayerwiseOptimizer,
    galore_param_groups,
)

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs gloo"
)

WORLD = 2
STEPS = 3
BATCH = 16  # rows per step, BATCH // WORLD on each rank
N_IN, HIDDEN, N_OUT = 6, 10, 4
LR = 1e-2
# gap 2 over 3 steps: the bases are built at step 0 and refreshed at step 2, mid-run; the source is "svd" unless a
# case names another, so all four sources run
GALORE = {"rank": 2, "update_proj_gap": 2, "moments": "rotate"}
NUM_GRADS = 4
BUCKET_VIEWS = (False, True)

# Both runs are float64. DDP averages two half-batch gradients, the single process differentiates one mean over
# the whole batch: the gradients differ by rounding (~1e-16 relative), which three steps amplify by the optimizers'
# conditioning (Adam's 1/sqrt(v), M-FAC's 1/damp = 10, the bases' QR and eigenproblems). Measured: at most 9e-15
# relative (dct); 1e-10 leaves four orders of magnitude for other BLAS builds. GaLoreAdamW8bit's float32 and 8-bit
# moments see identical inputs unless a float64 difference straddles a float32 rounding boundary (~1e-9 per entry).
RTOL, ATOL = 1e-10, 1e-12


def _adamw(params):
    return GaLoreAdamW(params, lr=LR, weight_decay=0.1)


def _adamw8bit(params):
    # min_8bit_size=0: every moment of this small model is 8-bit (block-wise codes and absmax)
    return GaLoreAdamW8bit(params, lr=LR, weight_decay=0.1, min_8bit_size=0)


def _adafactor(params):
    return GaLoreAdafactor(params, lr=LR, beta1=0.9, weight_decay=0.1)


def _mfac(params, sparse=False):
    return MFAC(params, lr=LR, num_grads=NUM_GRADS, damp=0.1, momentum=0.5, weight_decay=1e-2, sparse=sparse)


def _mfac_pruned(model):
    """M-FAC with ``sparse=True`` on a model whose smaller half of each weight matrix is pruned to zero."""
    with torch.no_grad():
        for weight in (model.attn_proj.weight, model.mlp_out.weight):
            weight[weight.abs() < weight.abs().median()] = 0.0
    return _mfac(model.parameters(), sparse=True)


def _galore(factory, model, **options):
    return factory(galore_param_groups(model, **GALORE, **options))


def _layerwise(factory, model, **options):
    return LayerwiseOptimizer(galore_param_groups(model, **GALORE, **options), factory)


# name -> (optimizer builder over the unwrapped model, stepped layer-wise through LayerwiseOptimizer.attach)
CASES = {
    "galore-adamw-randomized": (functools.partial(_galore, _adamw, proj="randomized"), False),
    "galore-adamw-dct": (functools.partial(_galore, _adamw, proj="dct"), False),
    "galore-adamw-error-feedback": (functools.partial(_galore, _adamw, proj="random", error_feedback=True), False),
    "galore-adamw8bit": (functools.partial(_galore, _adamw8bit), False),
    "galore-adafactor": (functools.partial(_galore, _adafactor), False),
    "mfac": (lambda model: _mfac(model.parameters()), False),
    "mfac-sparse": (_mfac_pruned, False),
    # one window per parameter: a block-diagonal Fisher
    "layerwise-mfac": (lambda model: LayerwiseOptimizer(model.parameters(), _mfac), True),
    "layerwise-galore-adamw-randomized": (functools.partial(_layerwise, _adamw, proj="randomized"), True),
    "layerwise-galore-adafactor": (functools.partial(_layerwise, _adafactor), True),
    "layerwise-galore-adamw8bit": (functools.partial(_layerwise, _adamw8bit), True),
}
# bitsandbytes is optional (the llm extra): without it the 8-bit cases are skipped, the others still run
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
RUN = [name for name in CASES if HAS_BITSANDBYTES or "8bit" not in name]


def _cases(names):
    needs_bitsandbytes = pytest.mark.skipif(not HAS_BITSANDBYTES, reason="needs bitsandbytes")
    return [pytest.param(name, marks=needs_bitsandbytes) if "8bit" in name else name for name in names]


PROJECTED = [name for name in CASES if "mfac" not in name]


def _model():
    return galore_cases.Block(N_IN, HIDDEN, N_OUT, seed=0).double()


def _batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, N_IN, generator=generator, dtype=torch.float64)
    return x, torch.randn(BATCH, N_OUT, generator=generator, dtype=torch.float64)


def _state_entries(optimizer):
    """The optimizer's state as ``{"<param index>/<key>[/<projector key>]": tensor or number}``."""
    flat = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            for inner, entry in value.items() if isinstance(value, dict) else [(None, value)]:
                flat["/".join(str(part) for part in (index, key, inner) if part is not None)] = entry
    return flat


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for name, bucket_view in itertools.product(RUN, BUCKET_VIEWS):
            build, layerwise = CASES[name]
            model = _model()
            # with bucket views the optimizers read .grad as views into DDP's all-reduce buffers
            ddp = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=bucket_view)
            # built after the wrap, which broadcasts rank 0's weights (as M-FAC's sparse mask must be)
            opt = build(model)
            if layerwise:
                opt.attach(ddp)
            for step in range(STEPS):
                x, y = _batch(step)
                torch.nn.functional.mse_loss(ddp(x[rows]), y[rows]).backward()
                opt.step()
                opt.zero_grad()
            results[name, bucket_view] = {
                "params": [p.detach().clone() for p in model.parameters()],
                "state": _state_entries(opt),
            }
            del ddp, opt
        save_rank(results, out_dir, rank)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Each rank's parameters and optimizer state after the DDP runs of every case (one spawn for all)."""
    return run_ranks(_worker, tmp_path_factory.mktemp("ddp"), WORLD)


def _single_process(name):
    build, _ = CASES[name]
    model = _model()
    opt = build(model)
    for step in range(STEPS):
        x, y = _batch(step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


@pytest.mark.parametrize("bucket_view", BUCKET_VIEWS, ids=["grad-copies", "bucket-views"])
@pytest.mark.parametrize("name", _cases(CASES))
def test_ranks_are_bit_equal(ddp_runs, name, bucket_view):
    first, second = (run[name, bucket_view] for run in ddp_runs)
    for p, q in zip(first["params"], second["params"], strict=True):
        assert torch.equal(p, q)
    assert first["state"].keys() == second["state"].keys()
    for key, entry in first["state"].items():
        other = second["state"][key]
        assert torch.equal(entry, other) if torch.is_tensor(entry) else entry == other, key


@pytest.mark.parametrize("name", _cases(CASES))
def test_ranks_equal_one_process_on_the_whole_batch(ddp_runs, name):
    model, _ = _single_process(name)
    for bucket_view in BUCKET_VIEWS:
        for p, expected in zip(ddp_runs[0][name, bucket_view]["params"], model.parameters(), strict=True):
            torch.testing.assert_close(p, expected.detach(), rtol=RTOL, atol=ATOL)
    # sparse M-FAC freezes the entries that are exactly zero: the pruned ones and the zero-initialised norm bias
    if name != "mfac-sparse":
        for p, p0 in zip(model.parameters(), _model().parameters(), strict=True):
            assert not torch.equal(p, p0)


@pytest.mark.parametrize("name", _cases(PROJECTED))
def test_bases_were_refreshed_mid_run(ddp_runs, name):
    for run in ddp_runs:
        refreshes = [entry for key, entry in run[name, False]["state"].items() if key.endswith("/projector/refreshes")]
        assert refreshes == [2, 2]  # attn_proj.weight and mlp_out.weight, each built at step 0 and refreshed at 2


def test_mfac_window_is_replicated_on_every_rank(ddp_runs):
    """Each rank keeps the whole m x d window of averaged gradients: the single process's window, up to rounding."""
    model, opt = _single_process("mfac")
    expected = opt.state[next(model.parameters())]  # M-FAC keeps its state under the first parameter
    d = sum(p.numel() for p in _model().parameters())
    for run in ddp_runs:
        state = run["mfac", False]["state"]
        assert state["0/grads"].shape == (NUM_GRADS, d)
        torch.testing.assert_close(state["0/grads"], expected["grads"], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(state["0/gram"], expected["gram"], rtol=RTOL, atol=ATOL)
        assert int(state["0/step"]) == STEPS


def test_sparse_mfac_moves_only_the_unpruned_weights_on_every_rank(ddp_runs):
    pruned = _model()
    _mfac_pruned(pruned)
    for run in ddp_runs:
        for p, p0 in zip(run["mfac-sparse", False]["params"], pruned.parameters(), strict=True):
            zero = p0 == 0
            torch.testing.assert_close(p[zero], p0[zero].detach(), rtol=0, atol=0)
            if not zero.all():
                assert (p[~zero] != p0[~zero]).all()

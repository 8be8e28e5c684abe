"""GradNormLoRP: exact weight-norm gradients, AdamW on (m, V) at full rank, the kept magnitude, low-rank and 8-bit
training, resume, recipes, and DDP (two gloo ranks on half batches against one process on the whole batch)."""

import functools
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import galore_cases
from distributed_cases import run_ranks, save_rank

import optkit
from solvers.lowrank.gradnorm_lorp import NORM_AXES, GradNormLoRPAdamW, GradNormLoRPAdamW8bit, weight_norm_gradients
from solvers.lowrank.param_groups import galore_param_groups
from solvers.lowrank.recipes import GradNormLoRPAdamWRecipe

HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
needs_bitsandbytes = pytest.mark.skipif(not HAS_BITSANDBYTES, reason="needs bitsandbytes")
OPTIMIZERS = [GradNormLoRPAdamW, pytest.param(GradNormLoRPAdamW8bit, marks=needs_bitsandbytes)]
DIM = {"rows": 1, "columns": 0}


def Block(seed=0):
    return galore_cases.Block(12, 16, 4, seed=seed)


_batches = functools.partial(galore_cases.batches, n_in=12, n_out=4)
_train = galore_cases.train


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x.to(next(model.parameters()).dtype)), y.to(x.dtype))


@pytest.mark.parametrize("norm_axis", NORM_AXES)
def test_gradients_equal_autograd_through_the_reparameterisation(norm_axis):
    dim = DIM[norm_axis]
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    units = V.shape[1 - dim]
    # magnitudes of both signs and not equal to ‖V‖, so that m/‖V‖ and the sign both matter
    m = (torch.rand(units, generator=gen, dtype=torch.float64) + 0.5) * torch.tensor([1.0, -1.0]).repeat(units)[:units]
    m.requires_grad_(True)
    X = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    T = torch.randn(9, 7, generator=gen, dtype=torch.float64)

    def loss_of(W):
        return ((torch.tanh(X @ W.T) - T) ** 2).sum()

    norms = torch.linalg.vector_norm(V, dim=dim)
    loss_of(m.unsqueeze(dim) * V / norms.unsqueeze(dim)).backward()
    W = (m.unsqueeze(dim) * V / norms.unsqueeze(dim)).detach().requires_grad_(True)
    loss_of(W).backward()
    direction = (V / norms.unsqueeze(dim)).detach()
    grad_m, grad_v = weight_norm_gradients(direction, W.grad, m.detach(), norms.detach(), dim=dim)
    # float64 and a few dozen operations: agreement to rounding
    torch.testing.assert_close(grad_m, m.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_v, V.grad, rtol=1e-12, atol=1e-12)
    # the tangential term matters: without it (the reference) ∂L/∂V has a radial component
    radial = (W.grad * (m / norms).detach().unsqueeze(dim)) - grad_v
    assert radial.abs().max() > 1e-3


def _weight_normalised(model, dim):
    """``model`` with each linear weight reparameterised by torch's weight norm (leaves ``g``, ``v``)."""
    for module in (model.attn_proj, model.mlp_out):
        torch.nn.utils.parametrizations.weight_norm(module, dim=1 - dim)
    return model


@pytest.mark.parametrize("norm_axis", NORM_AXES)
def test_full_rank_equals_adamw_on_magnitude_and_direction(norm_axis):
    model = Block().double()
    explicit = _weight_normalised(Block().double(), DIM[norm_axis])
    # rank 64 reaches every projected dimension (identity projectors): AdamW on (m, V) and on the rest
    groups = galore_param_groups(model, rank=64, update_proj_gap=2)
    opt = GradNormLoRPAdamW(groups, lr=3e-2, weight_decay=0.1, norm_axis=norm_axis)
    ref = torch.optim.AdamW(explicit.parameters(), lr=3e-2, weight_decay=0.1, foreach=False)
    for batch in _batches(8):
        for net, optimizer in ((model, opt), (explicit, ref)):
            optimizer.zero_grad()
            _loss(net, batch).backward()
            optimizer.step()
    # Not bit for bit: ours rebuilds V from W at every step (rounding ~1e-16), which eight Adam steps carry
    # through 1/sqrt(v); measured at most 2.2e-16 absolute, 1.4e-13 relative (on the smallest entries).
    for name in ("attn_proj", "mlp_out"):
        ours, theirs = getattr(model, name), getattr(explicit, name)
        torch.testing.assert_close(ours.weight, theirs.weight.detach(), rtol=1e-11, atol=1e-13)
        state = opt.state[ours.weight]
        g = theirs.parametrizations.weight.original0.detach().reshape(-1)
        v = theirs.parametrizations.weight.original1.detach()
        torch.testing.assert_close(state["magnitude"], g, rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(state["direction_norm"], torch.linalg.vector_norm(v, dim=DIM[norm_axis]))
    for p, q in ((model.norm.weight, explicit.norm.weight), (model.attn_proj.bias, explicit.attn_proj.bias)):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-13)


def test_a_negative_magnitude_is_the_same_weight_with_v_reversed():
    """(m_i, V_i) and (−m_i, −V_i) are one weight: flipping a unit's magnitude, and the first moments of m_i and
    of V_i's row, mid-run must not change the trajectory (V's direction is read from W with m's sign)."""
    model, flipped = Block().double(), Block().double()
    # full rank: V's moments are (16, 12), so row 3 of the first moment is unit 3's
    opts = [GradNormLoRPAdamW(galore_param_groups(net, rank=64), lr=1e-2) for net in (model, flipped)]
    batches = _batches(6)
    for step, batch in enumerate(batches):
        for net, opt in zip((model, flipped), opts):
            _train(net, opt, [batch], torch.float64)
        if step == 1:
            state = opts[1].state[flipped.attn_proj.weight]
            for key in ("magnitude", "magnitude_exp_avg"):
                state[key][3] *= -1.0
            state["exp_avg"][3] *= -1.0
    assert opts[1].state[flipped.attn_proj.weight]["magnitude"][3] < 0
    # rounding of the rebuilt V only, as in the full-rank comparison with AdamW
    torch.testing.assert_close(flipped.attn_proj.weight, model.attn_proj.weight, rtol=1e-11, atol=1e-13)


def test_groups_without_rank_are_adamw_bit_for_bit():
    model, twin = Block(), Block()
    opt = GradNormLoRPAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    batches = _batches(3)
    _train(model, opt, batches)
    _train(twin, ref, batches)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert all("magnitude" not in state for state in opt.state.values())


def _low_rank(cls, model, **options):
    extra = {"min_8bit_size": 0} if cls is GradNormLoRPAdamW8bit else {}
    groups = galore_param_groups(model, rank=2, update_proj_gap=3, **options)
    return cls(groups, lr=2e-2, weight_decay=0.01, **extra)


def test_the_learned_magnitude_is_kept_and_the_reference_reset_differs():
    model, reset = Block().double(), Block().double()
    opt, opt_reset = _low_rank(GradNormLoRPAdamW, model), _low_rank(GradNormLoRPAdamW, reset)
    for step, batch in enumerate(_batches(10)):
        _train(model, opt, [batch], torch.float64)
        if step:
            # the reference sets the magnitude to ‖V‖ at the start of every step
            for p in (reset.attn_proj.weight, reset.mlp_out.weight):
                opt_reset.state[p]["magnitude"].copy_(opt_reset.state[p]["direction_norm"])
        _train(reset, opt_reset, [batch], torch.float64)
    weight = model.attn_proj.weight
    state = opt.state[weight]
    # the weight carries the learned magnitude: ‖W_i‖ = |m_i| (to rounding)
    torch.testing.assert_close(torch.linalg.vector_norm(weight, dim=1), state["magnitude"].abs(), rtol=1e-13, atol=0)
    # and it is not ‖V‖, which the reference would put there
    relative = ((state["magnitude"] - state["direction_norm"]) / state["magnitude"]).abs()
    assert relative.max() > 1e-2
    assert (weight - reset.attn_proj.weight).abs().max() > 1e-3


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("norm_axis", NORM_AXES)
def test_low_rank_training_reduces_the_loss(cls, norm_axis):
    model = Block()
    opt = _low_rank(cls, model, norm_axis=norm_axis)
    batch = _batches(1)[0]
    with torch.no_grad():
        initial = _loss(model, batch).item()
    _train(model, opt, [batch] * 30)
    with torch.no_grad():
        final = _loss(model, batch).item()
    assert final < 0.5 * initial
    # (16, 12): right side at rank 2, V's moments (16, 2)
    moment = opt.state[model.attn_proj.weight]["exp_avg" if cls is GradNormLoRPAdamW else "state1"]
    assert moment.shape == (16, 2)


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("moments, proj", [("keep", "svd"), ("rotate", "randomized"), ("reset", "dct")])
def test_resume_from_state_dict_equals_an_uninterrupted_run(tmp_path, cls, moments, proj):
    def build():
        model = Block()
        return model, _low_rank(cls, model, moments=moments, proj=proj, error_feedback=proj == "svd")

    def after_load(model, opt):
        assert opt.state[model.attn_proj.weight]["magnitude"].dtype == torch.float32

    galore_cases.assert_resume_is_exact(build, _batches(7), tmp_path / "ckpt.pt", after_load=after_load)


@needs_bitsandbytes
def test_8bit_state_is_smaller_than_32bit():
    measured = {}
    for cls in (GradNormLoRPAdamW, GradNormLoRPAdamW8bit):
        model = galore_cases.Block(64, 96, 8, seed=0)
        groups = galore_param_groups(model, rank=48, update_proj_gap=3)
        opt = cls(groups, lr=1e-2, **({"min_8bit_size": 0} if cls is GradNormLoRPAdamW8bit else {}))
        _train(model, opt, galore_cases.batches(2, 64, 8, size=32))
        # the 256-entry code maps are bitsandbytes' constants, shared by the parameters of a device
        measured[cls] = sum(
            value.numel() * value.element_size()
            for state in opt.state.values()
            for key, value in state.items()
            if torch.is_tensor(value) and value.dim() > 0 and key not in ("qmap1", "qmap2")
        )
    # V's moments: attn_proj (96, 64) right side at rank 48 -> (96, 48); mlp_out (8, 96) left, rank 48 >= 8 ->
    # identity, (8, 96). Four float32 vectors per unit (m, ‖V‖ and m's moments): 96 + 8 units. Unprojected:
    # two moments of the three 96-vectors and the 8-bias. 8-bit: one byte per moment value and a float32
    # scale per block of 256.
    projected, units, rest = 96 * 48 + 8 * 96, 96 + 8, 3 * 96 + 8
    assert measured[GradNormLoRPAdamW] == 4 * (2 * projected + 4 * units + 2 * rest)
    blocks = (18 + 3) + (1 + 1 + 1 + 1)
    assert measured[GradNormLoRPAdamW8bit] == 2 * projected + 4 * 4 * units + 2 * rest + 4 * 2 * blocks
    assert measured[GradNormLoRPAdamW8bit] < 0.3 * measured[GradNormLoRPAdamW]


def test_bad_input_raises_a_clear_error():
    with pytest.raises(ValueError, match="norm_axis"):
        GradNormLoRPAdamW(Block().parameters(), rank=2, norm_axis="rowwise")
    with pytest.raises(ValueError, match="norm_axis"):
        GradNormLoRPAdamW([{"params": list(Block().parameters()), "norm_axis": 1}], rank=2)
    weight = torch.nn.Parameter(torch.ones(4, 3))
    with torch.no_grad():
        weight[2] = 0.0
    opt = GradNormLoRPAdamW([weight], rank=2)
    weight.grad = torch.ones(4, 3)
    with pytest.raises(ValueError, match="zero row"):
        opt.step()
    torch.testing.assert_close(weight[0], torch.ones(3), rtol=0, atol=0)


def test_recipes_are_registered_and_validate_norm_axis():
    assert GradNormLoRPAdamWRecipe.norm_axes == NORM_AXES
    assert {"gradnorm-lorp", "gradnorm-lorp8bit"} <= set(optkit.list_solvers())
    with pytest.raises(ValueError, match="norm_axis"):
        optkit.registry.get_solver("gradnorm-lorp", norm_axis="diagonal")


def test_recipe_skips_a_matrix_variable_starting_with_a_zero_row():
    from problems.linear_models import SoftmaxRegression

    gen = np.random.default_rng(0)
    A, y = gen.standard_normal((20, 5)), np.arange(20) % 3
    solver = optkit.registry.get_solver("gradnorm-lorp", rank=2, max_iter=5, lr=1e-2)
    # the default start is zero: weight normalisation has no direction there
    assert "zero row" in solver.check(SoftmaxRegression(A, y))
    problem = SoftmaxRegression(A, y, x0=np.ones(15))
    assert solver.check(problem) is None
    result = solver.solve(problem)
    assert result.status == optkit.Status.MAX_ITER and result.fun < problem.fun(problem.x0)


# ---------------------------------------------------------------------------------------------- DDP
WORLD, STEPS, BATCH = 2, 3, 16
DDP_CASES = ["gradnorm-lorp"] + (["gradnorm-lorp8bit"] if HAS_BITSANDBYTES else [])


def _ddp_model():
    return galore_cases.Block(6, 10, 4, seed=0).double()


def _ddp_optimizer(name, model):
    cls = GradNormLoRPAdamW8bit if name == "gradnorm-lorp8bit" else GradNormLoRPAdamW
    extra = {"min_8bit_size": 0} if cls is GradNormLoRPAdamW8bit else {}
    # gap 2 over 3 steps: a refresh mid-run
    groups = galore_param_groups(model, rank=2, update_proj_gap=2, moments="rotate")
    return cls(groups, lr=1e-2, weight_decay=0.1, **extra)


def _ddp_batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 6, generator=generator, dtype=torch.float64)
    return x, torch.randn(BATCH, 4, generator=generator, dtype=torch.float64)


def _ddp_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for name in DDP_CASES:
            model = _ddp_model()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            opt = _ddp_optimizer(name, model)
            for step in range(STEPS):
                x, y = _ddp_batch(step)
                torch.nn.functional.mse_loss(ddp(x[rows]), y[rows]).backward()
                opt.step()
                opt.zero_grad()
            state = opt.state[model.attn_proj.weight]
            results[name] = {
                "params": [p.detach().clone() for p in model.parameters()],
                "magnitude": state["magnitude"].clone(),
                "direction_norm": state["direction_norm"].clone(),
            }
            del ddp, opt
        save_rank(results, out_dir, rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_ddp_ranks_are_bit_equal_and_equal_one_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path, WORLD)
    for name in DDP_CASES:
        first, second = ranks[0][name], ranks[1][name]
        for key in ("magnitude", "direction_norm"):
            assert torch.equal(first[key], second[key]), (name, key)
        for p, q in zip(first["params"], second["params"], strict=True):
            assert torch.equal(p, q), name
        model = _ddp_model()
        opt = _ddp_optimizer(name, model)
        for step in range(STEPS):
            torch.nn.functional.mse_loss(model(_ddp_batch(step)[0]), _ddp_batch(step)[1]).backward()
            opt.step()
            opt.zero_grad()
        # float64: DDP averages two half-batch gradients, one process takes one mean over the batch; the
        # gradients differ by rounding (~1e-16 relative), which three steps carry through Adam's 1/sqrt(v),
        # the SVD and the 8-bit codes (a float32 rounding boundary); as tests/solvers/test_distributed_family.py.
        # Measured: 1.1e-16 absolute (3.5e-15 relative) for gradnorm-lorp, 0 for gradnorm-lorp8bit.
        for p, expected in zip(first["params"], model.parameters(), strict=True):
            torch.testing.assert_close(p, expected.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(first["magnitude"], opt.state[model.attn_proj.weight]["magnitude"])

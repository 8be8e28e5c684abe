"""GaLoreAdafactor against HF's Adafactor and galore-torch, moment rules on a refresh, resumed runs, bad options."""

import functools
import math

import pytest

torch = pytest.importorskip("torch")

import galore_cases  # noqa: E402
from solvers.lowrank.galore_adafactor import GaLoreAdafactor  # noqa: E402
from solvers.lowrank.param_groups import galore_param_groups  # noqa: E402


def Block(seed=0):
    return galore_cases.Block(12, 16, 10, seed=seed)


_batches = functools.partial(galore_cases.batches, n_in=12, n_out=10)
_train = galore_cases.train


@pytest.mark.parametrize(
    "options",
    [
        dict(lr=1e-2),
        dict(lr=1e-2, beta1=0.9, weight_decay=0.05, clip_threshold=0.5, decay_rate=-0.6),
        dict(lr=None, beta1=0.8, relative_step=True, scale_parameter=True, warmup_init=True, weight_decay=0.01),
    ],
)
def test_full_rank_equals_hf_adafactor_bit_for_bit(options):
    from transformers.optimization import Adafactor

    model, reference = Block(), Block()
    # rank 64 reaches every projected dimension: identity projectors; biases and the norm are 1-D
    opt = GaLoreAdafactor(galore_param_groups(model, rank=64, update_proj_gap=2), **options)
    hf_options = dict(scale_parameter=False, relative_step=False, warmup_init=False) | options
    ref = Adafactor(reference.parameters(), **hf_options)
    for batch in _batches(6):
        _train(model, opt, [batch])
        _train(reference, ref, [batch])
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert not torch.equal(model.attn_proj.weight, Block().attn_proj.weight)


@pytest.mark.parametrize("beta1, gap", [(None, 2), (0.9, 100)])
def test_matches_the_official_galore_torch_adafactor(beta1, gap):
    galore_torch = pytest.importorskip("galore_torch")
    model, reference = Block(), Block()
    options = dict(rank=3, update_proj_gap=gap, scale=0.25)
    hyper = dict(lr=1e-2, beta1=beta1, weight_decay=0.01, scale_parameter=False, relative_step=False)
    opt = GaLoreAdafactor(galore_param_groups(model, **options), **hyper)
    ref = galore_torch.GaLoreAdafactor(galore_param_groups(reference, **options, proj_type="std"), **hyper)
    batches = _batches(7)
    _train(model, opt, batches)
    _train(reference, ref, batches)
    # The same SVD bases up to signs. Without a first moment the step does not see them (the
    # factors hold squares), so refreshes are compared too; with beta1 the first moment kept
    # across a refresh would, so one basis serves the whole run. Right-side bases come from
    # svd(Gᵀ) here and svd(G) there: float32 round-off only.
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def _expected_second_step(low, row, col, exp_avg, t, lr, beta1, eps=1e-30):
    """HF Adafactor's factored update of ``low`` from the given moments (decay clock ``t``)."""
    beta2t = 1.0 - t**-0.8
    sq = low**2 + eps
    row = beta2t * row + (1 - beta2t) * sq.mean(dim=-1)
    col = beta2t * col + (1 - beta2t) * sq.mean(dim=-2)
    update = low / torch.sqrt(torch.outer(row / row.mean(), col))
    rms = update.norm() / math.sqrt(update.numel())
    update = update / max(rms.item(), 1.0) * lr
    return row, col, beta1 * exp_avg + (1 - beta1) * update


@pytest.mark.parametrize("moments", ["keep", "rotate", "reset"])
def test_moment_rules_on_a_refresh(moments):
    gen = torch.Generator().manual_seed(3)
    weight = torch.nn.Parameter(torch.randn(12, 20, generator=gen))
    lr, beta1 = 1e-2, 0.9
    opt = GaLoreAdafactor([weight], lr=lr, beta1=beta1, rank=4, proj="random", update_proj_gap=1, moments=moments)
    state = opt.state[weight]
    weight.grad = torch.randn(12, 20, generator=gen)
    opt.step()
    basis1 = state["projector"]["basis"].clone()
    exp_avg1, row1, col1 = (state[k].clone() for k in ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col"))
    before = weight.detach().clone()
    weight.grad = torch.randn(12, 20, generator=gen)
    opt.step()
    basis2 = state["projector"]["basis"]
    assert basis2.shape == (12, 4) and not torch.allclose(basis1, basis2)
    low2 = basis2.mT @ weight.grad
    rotation = basis2.mT @ basis1
    start = {
        "keep": (row1, col1, exp_avg1, 2),
        "rotate": (torch.zeros_like(row1), torch.zeros_like(col1), rotation @ exp_avg1, 1),
        "reset": (torch.zeros_like(row1), torch.zeros_like(col1), torch.zeros_like(exp_avg1), 1),
    }[moments]
    row, col, exp_avg = _expected_second_step(low2, *start, lr=lr, beta1=beta1)
    torch.testing.assert_close(state["exp_avg_sq_row"], row, rtol=1e-6, atol=0)
    torch.testing.assert_close(state["exp_avg_sq_col"], col, rtol=1e-6, atol=0)
    torch.testing.assert_close(state["exp_avg"], exp_avg, rtol=1e-5, atol=1e-9)
    # atol: float32 round-off of weights of size ~3, against updates of ~1e-3
    torch.testing.assert_close(weight.detach() - before, -(basis2 @ exp_avg), rtol=1e-5, atol=1e-6)
    assert state["moment_origin"] == (0 if moments == "keep" else 1)


@pytest.mark.parametrize(
    "moments, dtype, proj",
    [("keep", torch.float32, "random"), ("rotate", torch.float32, "svd"), ("reset", torch.bfloat16, "dct")],
)
def test_resume_from_state_dict_equals_an_uninterrupted_run(tmp_path, moments, dtype, proj):
    options = dict(rank=3, update_proj_gap=2, proj=proj, moments=moments)
    batches = _batches(6)

    def build():
        model = Block().to(dtype)
        return model, GaLoreAdafactor(galore_param_groups(model, **options), lr=1e-2, beta1=0.9, weight_decay=0.01)

    def check_dtypes(model, opt):
        # torch's loader casts state to the parameter dtype; float32 moments and int32 indices must survive
        state = opt.state[model.attn_proj.weight]
        assert state["exp_avg"].dtype == state["exp_avg_sq_row"].dtype == torch.float32
        if proj == "dct":
            assert state["projector"]["indices"].dtype == torch.int32

    galore_cases.assert_resume_is_exact(build, batches, tmp_path / "ckpt.pt", dtype=dtype, after_load=check_dtypes)


def test_factored_state_has_the_projected_shape_and_counted_bytes():
    model = Block()
    opt = GaLoreAdafactor(galore_param_groups(model, ["attn_proj"], rank=4), lr=1e-3, beta1=0.9)
    _train(model, opt, _batches(1))
    state = opt.state[model.attn_proj.weight]
    # (16, 12): m >= n, right side: projected gradient (16, 4), basis (12, 4)
    assert state["exp_avg"].shape == (16, 4) and state["exp_avg_sq_row"].shape == (16,)
    assert state["exp_avg_sq_col"].shape == (4,) and state["projector"]["basis"].shape == (12, 4)
    rest = [p for p in model.parameters() if p is not model.attn_proj.weight]
    # others full-rank: exp_avg plus row/col factors (2-D) or an unfactored exp_avg_sq (1-D)
    full = sum(4 * (p.numel() + (sum(p.shape) if p.dim() == 2 else p.numel())) for p in rest)
    assert opt.state_nbytes() == {"moments": full + 4 * (16 * 4 + 16 + 4), "projector": 12 * 4 * 4}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": 2, "update_proj_gap": 0}, ValueError, "update_proj_gap"),
        ({"rank": 2, "projection_type": "std"}, TypeError, "projection_type"),
        ({"lr": None}, ValueError, "lr"),
        ({"relative_step": True}, ValueError, "relative_step"),
        ({"lr": None, "warmup_init": True}, ValueError, "lr"),
        ({"warmup_init": True}, ValueError, "warmup_init"),
        ({"clip_threshold": 0.0}, ValueError, "clip_threshold"),
        ({"decay_rate": 0.5}, ValueError, "decay_rate"),
        ({"beta1": 1.0}, ValueError, "beta1"),
        ({"eps": (1e-30,)}, ValueError, "eps"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay"),
    ],
)
def test_bad_options_raise_before_any_step(kwargs, error, match):
    with pytest.raises(error, match=match):
        GaLoreAdafactor(Block().parameters(), **({"lr": 1e-2} | kwargs))

"""GaLoreAdamW against torch's AdamW, the official galore-torch, resumed runs and DDP; param-group selection."""

import copy
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import galore_cases
from distributed_cases import run_ranks, save_rank

from solvers.lowrank.galore_adamw import GaLoreAdamW
from solvers.lowrank.param_groups import galore_param_groups, select_linear_modules

SOURCES = ("svd", "randomized", "dct", "random")


def Block(seed=0):
    return galore_cases.Block(12, 16, 10, head=4, seed=seed)


_batches = functools.partial(galore_cases.batches, n_in=12, n_out=4)
_train = galore_cases.train


def test_full_rank_galore_equals_adamw_bit_for_bit():
    model, reference = Block(), Block()
    opt = GaLoreAdamW(galore_param_groups(model, "all-linear", rank=64, update_proj_gap=2), lr=3e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(reference.parameters(), lr=3e-2, weight_decay=0.1, foreach=False)
    batches = _batches(10)
    for batch in batches:
        _train(model, opt, [batch])
        _train(reference, ref, [batch])
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_matches_the_official_galore_torch_with_exact_svd():
    galore_torch = pytest.importorskip("galore_torch")
    model, reference = Block(), Block()
    # one basis for the whole run: at a refresh, GaLore keeps moments built in the old basis,
    # so the result would depend on the arbitrary signs LAPACK gives the new singular vectors
    options = dict(rank=3, update_proj_gap=100, scale=0.25)
    opt = GaLoreAdamW(galore_param_groups(model, "attn-mlp", **options), lr=1e-2, eps=1e-12)
    groups = galore_param_groups(reference, "attn-mlp", **options, proj_type="std")
    ref = galore_torch.GaLoreAdamW(groups, lr=1e-2, eps=1e-12, no_deprecation_warning=True)
    batches = _batches(7)
    _train(model, opt, batches)
    _train(reference, ref, batches)
    # Same algorithm; bases may differ in sign only, which the update does not see, and
    # galore-torch adds eps after the bias correction of the square root, an O(eps) difference.
    for p, q in zip(model.parameters(), reference.parameters()):
        np.testing.assert_allclose(p.detach(), q.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("moments, refresh", [("keep", "fixed"), ("rotate", "adaptive"), ("reset", "fixed")])
def test_resume_from_state_dict_equals_an_uninterrupted_run(tmp_path, source, moments, refresh):
    options = dict(update_proj_gap=2, proj=source, moments=moments, refresh=refresh)
    batches = _batches(6)

    def build():
        model = Block()
        return model, GaLoreAdamW(galore_param_groups(model, rank=3, **options), lr=1e-2, weight_decay=0.01)

    galore_cases.assert_resume_is_exact(build, batches, tmp_path / "ckpt.pt")


def test_projected_state_has_the_low_rank_shape_and_counted_bytes():
    model = Block()
    opt = GaLoreAdamW(galore_param_groups(model, ["attn_proj"], rank=4, proj="svd"), lr=1e-3)
    _train(model, opt, _batches(1))
    state = opt.state[model.attn_proj.weight]
    # (16, 12): m >= n, so the right side: moments (16, 4), basis (12, 4)
    assert state["exp_avg"].shape == (16, 4) and state["projector"]["basis"].shape == (12, 4)
    full = sum(2 * p.numel() * 4 for p in model.parameters() if p is not model.attn_proj.weight)
    assert opt.state_nbytes() == {"moments": full + 2 * 16 * 4 * 4, "projector": 12 * 4 * 4}
    assert opt.projector_refresh_seconds > 0.0


def test_bfloat16_parameters_train():
    model = Block().to(torch.bfloat16)
    opt = GaLoreAdamW(galore_param_groups(model, rank=3, proj="randomized"), lr=1e-2)
    x, y = _batches(1)[0]
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x.bfloat16()).float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert opt.state[model.attn_proj.weight]["exp_avg"].dtype == torch.bfloat16
    assert losses[-1] < losses[0]


def test_target_selection_rules():
    model = Block()
    assert select_linear_modules(model, "all-linear") == ["attn_proj", "mlp_out"]
    assert select_linear_modules(model, "attn-mlp") == ["attn_proj", "mlp_out"]
    assert select_linear_modules(model, ["mlp_out", "lm_head"]) == ["mlp_out", "lm_head"]
    assert select_linear_modules(model, r"attn_.*") == ["attn_proj"]
    groups = galore_param_groups(model, ["mlp_out"], rank=2, scale=0.5)
    assert [len(g["params"]) for g in groups] == [6, 1]
    assert groups[1]["params"][0] is model.mlp_out.weight and groups[1]["scale"] == 0.5


def test_nothing_matched_lists_the_linear_modules():
    with pytest.raises(ValueError, match=r"selects no nn.Linear.*attn_proj, mlp_out, lm_head"):
        galore_param_groups(Block(), "q_proj", rank=2)
    with pytest.raises(ValueError, match="norm"):
        # a LayerNorm is not a linear module, so naming it selects nothing
        select_linear_modules(Block(), ["norm"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": 2, "update_proj_gap": 0}, ValueError, "update_proj_gap"),
        ({"rank": 2, "proj": "qr"}, ValueError, "proj must be one of"),
        ({"rank": 2, "refresh": "lazy"}, ValueError, "refresh"),
        ({"rank": 2, "projection_type": "std"}, TypeError, "projection_type"),
    ],
)
def test_bad_options_raise_before_any_step(kwargs, error, match):
    with pytest.raises(error, match=match):
        GaLoreAdamW(Block().parameters(), **kwargs)


def test_unsupported_parameters_raise():
    with pytest.raises(ValueError, match="complex"):
        GaLoreAdamW([torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))], rank=2)
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    opt = GaLoreAdamW(embedding.parameters(), rank=2)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def _ddp_worker(rank, port, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {}
        for source in SOURCES:
            model = torch.nn.parallel.DistributedDataParallel(Block())
            opt = GaLoreAdamW(galore_param_groups(model.module, rank=3, proj=source, update_proj_gap=2), lr=1e-2)
            # each rank sees different data; DDP averages the gradients
            _train(model, opt, _batches(4, seed=10 + rank))
            results[source] = [p.detach().clone() for p in model.parameters()]
        save_rank(results, out_dir, rank)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_end_with_identical_parameters(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path, world=2)
    initial = [p.detach() for p in Block().parameters()]
    for source in SOURCES:
        for p, q, p0 in zip(ranks[0][source], ranks[1][source], initial):
            assert torch.equal(p, q), source
            assert not torch.equal(p, p0)


def test_groups_without_rank_are_adamw():
    model = Block()
    twin = copy.deepcopy(model)
    opt = GaLoreAdamW(model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.0, foreach=False)
    batches = _batches(3)
    _train(model, opt, batches)
    _train(twin, ref, batches)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert all("projector" not in state for state in opt.state.values())


def test_error_feedback_carries_what_the_projection_dropped():
    weight = torch.nn.Parameter(torch.zeros(12, 8))
    opt = GaLoreAdamW([weight], lr=1e-3, rank=3, proj="random", update_proj_gap=1, error_feedback=True)
    gen = torch.Generator().manual_seed(5)
    carried = torch.zeros(12, 8)
    for _ in range(3):
        grad = torch.randn(12, 8, generator=gen)
        weight.grad = grad.clone()
        opt.step()
        state = opt.state[weight]
        B = opt.projector_for(opt.param_groups[0]).basis(state["projector"])
        fed = grad + carried
        # (12, 8): the right side, so the kept part is A B Bᵀ
        carried = fed - fed @ B @ B.T
        torch.testing.assert_close(state["error"], carried, rtol=1e-5, atol=1e-6)
    assert carried.norm() > 0.1

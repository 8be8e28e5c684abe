"""OBS pruning with M-FAC and the magnitude baselines, against dense inverses, closed forms and the reference's formula.

The oracles compute their gradients independently (``loss.backward()`` and ``.grad``) and
invert the dense empirical Fisher (or its dense block-diagonal part) with
``torch.linalg.inv``; the tiny models keep ``d`` small enough for that.
"""

import copy
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from solvers.curvature.mfac_inverse import empirical_fisher
from solvers.curvature.obs_pruning import (
    apply_masks,
    global_magnitude_prune,
    magnitude_prune,
    mfac_prune,
    sparsity_of,
)

DAMP = 1e-3


def tiny_model(seed=0, dtype=torch.float64):
    """3 -> 4 -> 2 with tanh: 12 + 8 = 20 prunable weights (and two biases, never pruned)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


def tiny_batches(count, seed=1, size=5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, generator=gen, dtype=dtype), torch.randint(0, 2, (size,), generator=gen))
        for _ in range(count)
    ]


def cross_entropy(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


WEIGHTS = ["0.weight", "2.weight"]


def flat_weights(model):
    named = dict(model.named_parameters())
    return torch.cat([named[n].detach().reshape(-1) for n in WEIGHTS]).clone()


def oracle_gradients(model, batches, kept):
    """One row per batch: the loss's gradient over the kept weights, by ``backward`` in eval mode."""
    named = dict(model.named_parameters())
    rows = []
    model.eval()
    for batch in batches:
        model.zero_grad()
        cross_entropy(model, batch).backward()
        rows.append(torch.cat([named[n].grad.reshape(-1) for n in WEIGHTS])[kept])
    model.zero_grad()
    return torch.stack(rows)


def dense_inverse(grads, damp, block_size):
    """The inverse of the damped empirical Fisher, or of its block-diagonal part (contiguous blocks)."""
    fisher = empirical_fisher(grads, damp)
    if block_size is not None:
        block = torch.arange(fisher.shape[0]) // block_size
        fisher = torch.where(block[:, None] == block[None, :], fisher, torch.zeros_like(fisher))
    return torch.linalg.inv(fisher)


def masks_from(flat_kept):
    return {"0.weight": flat_kept[:12].reshape(4, 3), "2.weight": flat_kept[12:].reshape(2, 4)}


@pytest.mark.parametrize("block_size", [None, 5, 20])
@pytest.mark.parametrize("start_masked", [False, True])
def test_one_sub_step_equals_obs_with_the_dense_inverse(block_size, start_masked):
    model = tiny_model()
    batches = tiny_batches(7)
    kept = torch.ones(20, dtype=torch.bool)
    if start_masked:
        kept[[1, 6, 13, 19]] = False
    w = flat_weights(model)
    w[~kept] = 0
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference[0].weight.copy_(w[:12].reshape(4, 3))
        reference[2].weight.copy_(w[12:].reshape(2, 4))
    biases = [model[0].bias.detach().clone(), model[2].bias.detach().clone()]

    # the oracle: scores from diag of the dense inverse, OBS update from its columns
    finv = dense_inverse(oracle_gradients(reference, batches, kept), DAMP, block_size)
    w_kept = w[kept]
    scores = w_kept**2 / (2 * torch.diagonal(finv))
    drop = torch.argsort(scores)[: 10 - int((~kept).sum())]
    expected_kept = w_kept + finv[:, drop] @ (-w_kept[drop] / torch.diagonal(finv)[drop])
    expected_kept[drop] = 0
    expected = torch.zeros(20, dtype=torch.float64)
    expected[kept] = expected_kept
    expected_mask = kept.clone()
    expected_mask[kept.nonzero().squeeze(1)[drop]] = False

    masks = mfac_prune(
        model,
        cross_entropy,
        batches,
        0.5,
        num_grads=7,
        block_size=block_size,
        damp=DAMP,
        recomputations=1,
        masks=masks_from(kept) if start_masked else None,
    )
    np.testing.assert_allclose(flat_weights(model).numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)
    assert torch.equal(torch.cat([masks[n].reshape(-1) for n in WEIGHTS]), expected_mask)
    # the update moved kept weights, not only zeroed the dropped ones
    assert not torch.allclose(flat_weights(model)[expected_mask], w[expected_mask])
    np.testing.assert_array_equal(model[0].bias.detach().numpy(), biases[0].numpy())
    np.testing.assert_array_equal(model[2].bias.detach().numpy(), biases[1].numpy())


def reference_sub_step(w, mask, grads, damp, blocksize, ndrop):
    """The reference's ``MFACPruner.prune`` on a flat weight vector, with ``HInvSlow``'s Woodbury recursion
    (``H = I/damp``, ``H -= (H g)(H g)^T / (m + g^T H g)`` per gradient) on each contiguous block of
    ``blocksize`` kept coordinates; ``grads`` are the ``(m, kept)`` gradients."""
    m, d1 = grads.shape
    hinv = torch.zeros((d1, d1), dtype=grads.dtype)
    for start in range(0, d1, blocksize):
        stop = min(start + blocksize, d1)
        H = torch.eye(stop - start, dtype=grads.dtype) / damp
        for g in grads[:, start:stop]:
            Hg = H @ g
            H = H - torch.outer(Hg, Hg) / (m + g @ Hg)
        hinv[start:stop, start:stop] = H
    w1 = w[mask].clone()
    diag = torch.diagonal(hinv)
    drop = torch.argsort(w1**2 / (2.0 * diag))[:ndrop]
    tmp = torch.zeros_like(w1)
    tmp[drop] = -w1[drop] / diag[drop]
    w1 += hinv @ tmp
    w1[drop] = 0
    w_new = w.clone()
    w_new[mask] = w1
    keep = torch.ones_like(w1)
    keep[drop] = 0
    mask_new = mask.clone()
    mask_new[mask] = keep > 0
    return w_new, mask_new


@pytest.mark.parametrize("blocksize", [6, 20])
def test_gradual_sub_steps_match_a_reimplementation_of_the_reference(blocksize):
    # gradual_prun from density 1 to sparsity 0.75 in nrecomps=2: fac = 0.25 ** (1/2) = 0.5, so the sub-step
    # sparsities are 0.5 and 0.75 and the reference's int(d * (s - current)) drops 10, then 5 of the 20 weights
    model = tiny_model(seed=3)
    batches = tiny_batches(6, seed=4)
    reference = copy.deepcopy(model)
    w, mask = flat_weights(reference), torch.ones(20, dtype=torch.bool)
    fac = ((1 - 0.75) / (1 - 0.0)) ** (1 / 2)
    for j in (1, 2):
        target = 1 - (1 - 0.0) * fac**j
        ndrop = int(20 * (target - torch.mean((~mask).float()).item()))
        w, mask = reference_sub_step(w, mask, oracle_gradients(reference, batches, mask), DAMP, blocksize, ndrop)
        with torch.no_grad():
            reference[0].weight.copy_(w[:12].reshape(4, 3))
            reference[2].weight.copy_(w[12:].reshape(2, 4))
    assert int((~mask).sum()) == 15

    masks = mfac_prune(
        model, cross_entropy, batches, 0.75, num_grads=6, block_size=blocksize, damp=DAMP, recomputations=2
    )
    np.testing.assert_allclose(flat_weights(model).numpy(), w.numpy(), rtol=1e-8, atol=1e-12)
    assert torch.equal(torch.cat([masks[n].reshape(-1) for n in WEIGHTS]), mask)


def test_obs_on_a_quadratic_reaches_the_constrained_minimum_and_beats_magnitude():
    # loss_fn on batch i is g_i . w: its gradient is the constant g_i, so the damped empirical Fisher is
    # H = damp I + (1/m) sum g_i g_i^T at every sub-step, the exact Hessian of Q(w) = 1/2 (w - w0)^T H (w - w0).
    # Removing one weight per sub-step is then exact OBS: the result is argmin Q subject to w_R = 0,
    # w_K = w0_K + H_KK^{-1} H_KR w0_R, with Q = 1/2 w0_R^T (H_RR - H_RK H_KK^{-1} H_KR) w0_R.
    gen = torch.Generator().manual_seed(7)
    d, m, k, damp = 6, 10, 3, 0.05
    mixing = torch.randn(d, d, generator=gen, dtype=torch.float64)
    grads = torch.randn(m, d, generator=gen, dtype=torch.float64) @ mixing  # strongly correlated coordinates
    H = damp * torch.eye(d, dtype=torch.float64) + grads.T @ grads / m
    w0 = torch.randn(d, generator=gen, dtype=torch.float64)

    def quadratic_model():
        model = nn.Linear(d, 1, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(w0[None])
        return model

    def Q(w):
        return float(0.5 * (w - w0) @ H @ (w - w0))

    def linear_loss(model, g):
        return (model.weight[0] * g).sum()

    model = quadratic_model()
    masks = mfac_prune(
        model, linear_loss, list(grads), k / d, num_grads=m, block_size=None, damp=damp, recomputations=k
    )
    removed = (~masks["weight"][0]).nonzero().squeeze(1)
    kept = masks["weight"][0].nonzero().squeeze(1)
    assert removed.numel() == k

    # greedy OBS with the dense Hessian chooses the same weights
    w, alive = w0.clone(), list(range(d))
    for _ in range(k):
        hinv = torch.linalg.inv(H[alive][:, alive])
        q = int(torch.argmin(w[alive] ** 2 / (2 * torch.diagonal(hinv))))
        w_alive = w[alive] - hinv[:, q] * w[alive][q] / hinv[q, q]
        w[alive] = w_alive
        w[alive[q]] = 0
        alive.pop(q)
    assert sorted(alive) == kept.tolist()

    expected = torch.zeros(d, dtype=torch.float64)
    expected[kept] = w0[kept] + torch.linalg.solve(H[kept][:, kept], H[kept][:, removed] @ w0[removed])
    np.testing.assert_allclose(model.weight[0].detach().numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)
    schur = H[removed][:, removed] - H[removed][:, kept] @ torch.linalg.solve(H[kept][:, kept], H[kept][:, removed])
    q_obs = Q(model.weight[0].detach())
    np.testing.assert_allclose(q_obs, float(0.5 * w0[removed] @ schur @ w0[removed]), rtol=1e-9)

    magnitude = quadratic_model()
    magnitude_prune(magnitude, k / d)
    w_mag = magnitude.weight[0].detach()
    smallest = torch.argsort(w0.abs())[:k]
    np.testing.assert_allclose(Q(w_mag), float(0.5 * w0[smallest] @ H[smallest][:, smallest] @ w0[smallest]))
    assert q_obs < 0.5 * Q(w_mag), (q_obs, Q(w_mag))


def test_sparsity_is_exact_and_the_masks_match_the_zeros():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).double()  # 35 + 15 weights
    batches = [(torch.randn(4, 7, dtype=torch.float64), torch.randint(0, 3, (4,))) for _ in range(3)]
    masks = mfac_prune(model, cross_entropy, batches, 0.3, num_grads=3, block_size=8, recomputations=5)
    assert [masks[n].shape for n in WEIGHTS] == [(5, 7), (3, 5)]
    assert all(mask.dtype == torch.bool for mask in masks.values())
    assert sum(int((~mask).sum()) for mask in masks.values()) == 15  # round(0.3 * 50)
    for name in WEIGHTS:
        weight = dict(model.named_parameters())[name].detach()
        assert torch.equal(weight != 0, masks[name])
    assert sparsity_of(model) == 0.3


def test_each_pruning_sub_step_takes_num_grads_batches_on_the_geometric_schedule():
    model = tiny_model()
    calls = []

    def counting_loss(model, batch):
        calls.append(batch)
        return cross_entropy(model, batch)

    # kept 20 -> 6 in 3 sub-steps: round(20 * 0.3 ** (1/3)) = 13, round(20 * 0.3 ** (2/3)) = 9, then 6
    mfac_prune(model, counting_loss, tiny_batches(4), 0.7, num_grads=4, recomputations=3)
    assert len(calls) == 12
    # 16 sub-steps from 20 to 18 kept: only the two whose rounded count falls prune, and take gradients
    calls.clear()
    mfac_prune(tiny_model(), counting_loss, tiny_batches(4), 0.1, num_grads=4, recomputations=16)
    assert len(calls) == 8


def test_an_iterator_is_consumed_on_and_a_list_is_reiterated():
    batches = tiny_batches(5)
    from_list = tiny_model()
    mfac_prune(from_list, cross_entropy, batches, 0.6, num_grads=5, recomputations=3)
    from_iterator = tiny_model()
    stream = itertools.chain.from_iterable(itertools.repeat(batches, 3))
    mfac_prune(from_iterator, cross_entropy, stream, 0.6, num_grads=5, recomputations=3)
    assert next(stream, None) is None
    np.testing.assert_array_equal(flat_weights(from_iterator).numpy(), flat_weights(from_list).numpy())


def test_an_iterator_that_runs_out_names_the_need_and_restores_the_weights():
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"batches ran out after 7: .* 9 batches \(num_grads=3\)"):
        mfac_prune(model, cross_entropy, iter(tiny_batches(7)), 0.5, num_grads=3, recomputations=3)
    for p, saved in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.detach().numpy(), saved.numpy())


def hand_made_model():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.25]], dtype=torch.float64))
        model[1].weight.copy_(torch.tensor([[1.0, -0.05], [3.0, 0.6]], dtype=torch.float64))
    return model


def test_magnitude_prunes_each_layer_and_global_magnitude_prunes_all_together():
    layerwise = hand_made_model()
    masks = magnitude_prune(layerwise, 0.5)  # 0.1, 0.2, 0.25 of the first layer, 0.05, 0.6 of the second
    np.testing.assert_array_equal(layerwise[0].weight.detach().numpy(), [[0.0, -5.0, 0.3], [2.0, 0.0, 0.0]])
    np.testing.assert_array_equal(layerwise[1].weight.detach().numpy(), [[1.0, 0.0], [3.0, 0.0]])
    assert masks["0.weight"].tolist() == [[False, True, True], [True, False, False]]

    # one threshold: the five smallest |w| of all ten are 0.05, 0.1, 0.2, 0.25, 0.3
    global_ = hand_made_model()
    masks = global_magnitude_prune(global_, 0.5)
    np.testing.assert_array_equal(global_[0].weight.detach().numpy(), [[0.0, -5.0, 0.0], [2.0, 0.0, 0.0]])
    np.testing.assert_array_equal(global_[1].weight.detach().numpy(), [[1.0, 0.0], [3.0, 0.6]])
    assert masks["1.weight"].tolist() == [[True, False], [True, True]]


def test_magnitude_pruners_start_from_masks_and_respect_params():
    model = hand_made_model()
    start = {"0.weight": torch.tensor([[True, False, True], [True, True, True]])}
    masks = magnitude_prune(model, 0.5, params=["0.weight"], masks=start)
    # -5 was pruned already, so two more go: 0.1 and 0.2; the other layer is not selected
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), [[0.0, 0.0, 0.3], [2.0, 0.0, 0.25]])
    np.testing.assert_array_equal(model[1].weight.detach().numpy(), [[1.0, -0.05], [3.0, 0.6]])
    assert list(masks) == ["0.weight"]

    model = hand_made_model()
    start = {"1.weight": torch.tensor([[True, True], [False, True]])}
    global_magnitude_prune(model, 0.3, masks=start)  # 3 of 10 zeros: 3.0 (masked), then 0.05 and 0.1
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), [[0.0, -5.0, 0.3], [2.0, -0.2, 0.25]])
    np.testing.assert_array_equal(model[1].weight.detach().numpy(), [[1.0, 0.0], [0.0, 0.6]])


def test_mfac_prune_keeps_masked_weights_at_zero():
    model = tiny_model()
    start = torch.ones(20, dtype=torch.bool)
    start[[0, 5, 12]] = False
    masks = mfac_prune(
        model, cross_entropy, tiny_batches(4), 0.4, num_grads=4, recomputations=3, masks=masks_from(start)
    )
    flat_mask = torch.cat([masks[n].reshape(-1) for n in WEIGHTS])
    assert not flat_mask[[0, 5, 12]].any()
    assert int((~flat_mask).sum()) == 8
    np.testing.assert_array_equal(flat_weights(model)[~flat_mask].numpy(), np.zeros(8))


def test_default_selection_is_every_linear_and_conv_weight():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.norm = nn.BatchNorm2d(2)
            self.head = nn.Linear(8, 3)
            self.tied = nn.Linear(8, 3)
            self.tied.weight = self.head.weight

        def forward(self, x):
            return self.head(self.norm(self.conv(x)).flatten(1))

    masks = global_magnitude_prune(Net(), 0.5)
    assert list(masks) == ["conv.weight", "head.weight"]
    assert sum(int((~m).sum()) for m in masks.values()) == 21  # round(0.5 * (18 + 24)) = 21


def test_modes_are_restored_and_gradients_are_taken_in_eval_mode():
    def dropout_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()

    in_train = dropout_model().train()
    in_train[2].eval()  # a mixed state must come back as it was
    mfac_prune(in_train, cross_entropy, tiny_batches(4), 0.5, num_grads=4, recomputations=2)
    assert [module.training for module in in_train.modules()] == [True, True, True, False]
    in_eval = dropout_model().eval()
    mfac_prune(in_eval, cross_entropy, tiny_batches(4), 0.5, num_grads=4, recomputations=2)
    assert not any(module.training for module in in_eval.modules())
    np.testing.assert_array_equal(flat_weights(in_train).numpy(), flat_weights(in_eval).numpy())


def test_apply_masks_zeroes_pruned_weights_after_a_training_step():
    model = tiny_model()
    masks = global_magnitude_prune(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cross_entropy(model, tiny_batches(1)[0]).backward()
    optimizer.step()
    assert sparsity_of(model) < 0.5
    apply_masks(model, masks)
    np.testing.assert_allclose(sparsity_of(model), 0.5)
    assert torch.equal(model[0].weight != 0, masks["0.weight"])


BAD_ARGUMENTS = [
    ({"sparsity": 1.0}, ValueError, r"sparsity must be a number in \[0, 1\), got 1.0"),
    ({"sparsity": -0.1}, ValueError, r"sparsity must be a number in \[0, 1\)"),
    ({"sparsity": True}, ValueError, r"sparsity must be a number"),
    ({"num_grads": 0}, ValueError, r"num_grads must be an integer >= 1, got 0"),
    ({"damp": 0.0}, ValueError, r"damp must be a positive finite number, got 0.0"),
    ({"recomputations": 0}, ValueError, r"recomputations must be an integer >= 1, got 0"),
    ({"block_size": 0}, ValueError, r"block_size must be an integer >= 1, got 0"),
    ({"params": ["0.weight", "9.weight"]}, ValueError, r"unknown parameters \['9.weight'\]"),
    ({"params": "0.weight"}, TypeError, r"params must be a sequence of parameter names"),
    ({"masks": {"0.weight": torch.ones(3, 4, dtype=torch.bool)}}, ValueError, r"masks\['0.weight'\] must be a bool"),
    ({"masks": {"0.weight": torch.ones(4, 3)}}, ValueError, r"masks\['0.weight'\] must be a bool tensor of shape"),
    ({"masks": {"0.bias": torch.ones(4, dtype=torch.bool)}}, ValueError, r"not being pruned"),
    ({"masks": masks_from(torch.arange(20) > 12)}, ValueError, r"masks already prune 13 weights .* the 10 the"),
    ({"batches": tiny_batches(3)}, ValueError, r"batches holds 3 batches; each sub-step needs num_grads=4"),
    ({"batches": 5}, TypeError, r"batches must be an iterable"),
    ({"loss_fn": "cross_entropy"}, TypeError, r"loss_fn must be a callable"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS)
def test_bad_arguments_are_refused_before_any_work(kwargs, error, message):
    model = tiny_model()
    before = flat_weights(model)
    calls = []

    def counting_loss(model, batch):
        calls.append(batch)
        return cross_entropy(model, batch)

    arguments = {"loss_fn": counting_loss, "batches": tiny_batches(4), "sparsity": 0.5, "num_grads": 4} | kwargs
    with pytest.raises(error, match=message):
        mfac_prune(model, **arguments)
    assert calls == []
    np.testing.assert_array_equal(flat_weights(model).numpy(), before.numpy())


def test_bad_losses_and_gradients_are_reported():
    with pytest.raises(TypeError, match="loss_fn must return a scalar tensor"):
        mfac_prune(tiny_model(), lambda model, batch: model(batch[0]), tiny_batches(4), 0.5, num_grads=4)
    model = tiny_model()
    before = flat_weights(model)
    with pytest.raises(ValueError, match="gradient of loss_fn on batch 0 of this sub-step is not finite"):
        mfac_prune(model, lambda m, b: cross_entropy(m, b) * float("inf"), tiny_batches(4), 0.5, num_grads=4)
    np.testing.assert_array_equal(flat_weights(model).numpy(), before.numpy())


def test_magnitude_pruners_refuse_bad_arguments():
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        magnitude_prune(hand_made_model(), 1.5)
    with pytest.raises(ValueError, match=r"masks already prune 2 weights of '1.weight', more than the 1"):
        magnitude_prune(hand_made_model(), 0.25, masks={"1.weight": torch.tensor([[False, True], [False, True]])})
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv1d/2d/3d weight"):
        global_magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="must share one device and dtype"):
        global_magnitude_prune(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double()), 0.5)
    with pytest.raises(ValueError, match="masks must be a non-empty mapping"):
        apply_masks(hand_made_model(), {})


@pytest.mark.gpu
def test_cuda_matches_the_cpu():
    batches = tiny_batches(6)
    on_cpu = tiny_model()
    cpu_masks = mfac_prune(on_cpu, cross_entropy, batches, 0.6, num_grads=6, block_size=7, recomputations=3)
    on_cuda = tiny_model().cuda()
    cuda_batches = [(x.cuda(), y.cuda()) for x, y in batches]
    cuda_masks = mfac_prune(on_cuda, cross_entropy, cuda_batches, 0.6, num_grads=6, block_size=7, recomputations=3)
    assert all(mask.device.type == "cuda" for mask in cuda_masks.values())
    for name in WEIGHTS:
        assert torch.equal(cuda_masks[name].cpu(), cpu_masks[name])
    np.testing.assert_allclose(flat_weights(on_cuda).cpu().numpy(), flat_weights(on_cpu).numpy(), rtol=1e-9, atol=1e-12)

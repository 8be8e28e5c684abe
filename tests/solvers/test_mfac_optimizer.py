"""The M-FAC optimizer (dynamic algorithm) against dense inverses of its window, and the ``mfac`` solver."""

import io
import math

import numpy as np
import pytest

import optkit
from optkit.problem import SmoothProblem
from solvers.curvature import MFACInverse

torch = pytest.importorskip("torch")
from solvers.curvature import MFAC


def dense_step_direction(window, damp, g):
    """F⁻¹ g with F = λI + Σᵢgᵢgᵢᵀ/m over the window (rows; zero rows while it fills)."""
    m, d = window.shape
    return np.linalg.solve(damp * np.eye(d) + window.T @ window / m, g)


def feed(opt, params, grads):
    """Set each parameter's .grad from the rows of ``grads`` (split over the parameters) and step."""
    for g in grads:
        offset = 0
        for p in params:
            p.grad = torch.as_tensor(g[offset : offset + p.numel()]).reshape(p.shape).to(p.dtype)
            offset += p.numel()
        opt.step()


def test_first_step_has_a_closed_form():
    # one gradient in the window: F⁻¹ g = g / (λ + ‖g‖²/m)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = MFAC([w], lr=0.1, num_grads=4, damp=0.5)
    g = np.array([3.0, 0.0, -4.0])
    feed(opt, [w], [g])
    np.testing.assert_allclose(w.detach().numpy(), [1.0, -2.0, 0.5] - 0.1 * g / (0.5 + 25.0 / 4), rtol=1e-14)


def test_trajectory_equals_dense_inverses_of_the_sliding_window():
    # 23 steps with m = 5: the ring buffer is overwritten four times
    rng = np.random.default_rng(0)
    d, m, damp, lr = 12, 5, 1e-2, 0.05
    grads = rng.standard_normal((23, d))
    w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    opt = MFAC([w], lr=lr, num_grads=m, damp=damp)
    expected = np.zeros(d)
    for k, g in enumerate(grads):
        feed(opt, [w], [g])
        window = np.zeros((m, d))
        last = grads[max(0, k + 1 - m) : k + 1]
        window[: len(last)] = last
        expected -= lr * dense_step_direction(window, damp, g)
        np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_ihvp_after_replacements_equals_a_fresh_static_operator():
    rng = np.random.default_rng(1)
    d, m, damp = 40, 8, 1e-3
    w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    opt = MFAC([w], lr=1e-3, num_grads=m, damp=damp)
    grads = rng.standard_normal((3 * m + 3, d))
    feed(opt, [w], grads)
    x = torch.tensor(rng.standard_normal(d))
    last_m = grads[-m:]
    fresh = MFACInverse(last_m, damp)
    np.testing.assert_allclose(opt.ihvp(x).numpy(), fresh @ x.numpy(), rtol=1e-10)
    np.testing.assert_allclose(opt.inverse_fisher().matvec(x).numpy(), fresh @ x.numpy(), rtol=1e-10)
    # the window's own Gram matrix, updated one row per step, equals G Gᵀ
    G = opt.state[w]["grads"].numpy()
    # one row by a matvec, the other by a matrix product: off-diagonal entries near zero get an
    # absolute allowance of rounding at the scale of the diagonal
    gram = G @ G.T
    np.testing.assert_allclose(opt.state[w]["gram"].numpy(), gram, rtol=1e-12, atol=1e-12 * np.abs(gram).max())


def test_window_larger_than_the_reference_limit():
    rng = np.random.default_rng(2)
    d, m = 30, 1500
    w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    opt = MFAC([w], lr=1.0, num_grads=m, damp=0.1)
    grads = rng.standard_normal((4, d))
    feed(opt, [w], grads)
    x = torch.tensor(rng.standard_normal(d))
    window = np.zeros((m, d))
    window[:4] = grads
    np.testing.assert_allclose(opt.ihvp(x).numpy(), dense_step_direction(window, 0.1, x.numpy()), rtol=1e-10)


def test_groups_momentum_and_weight_decay():
    rng = np.random.default_rng(3)
    a = torch.nn.Parameter(torch.tensor(rng.standard_normal((2, 3))))
    b = torch.nn.Parameter(torch.tensor(rng.standard_normal(4)))
    lrs, wds, mu, m, damp = (0.1, 0.02), (0.3, 0.0), 0.9, 3, 0.05
    opt = MFAC(
        [{"params": [a], "lr": lrs[0], "weight_decay": wds[0]}, {"params": [b], "lr": lrs[1]}],
        num_grads=m, damp=damp, momentum=mu,
    )
    w = np.concatenate([a.detach().numpy().ravel(), b.detach().numpy()])
    lr = np.repeat(lrs, [6, 4])
    wd = np.repeat(wds, [6, 4])
    window, v = np.zeros((m, 10)), np.zeros(10)
    for k, grad in enumerate(rng.standard_normal((7, 10))):
        feed(opt, [a, b], [grad])
        g = grad + wd * w
        window[k % m] = g
        v = mu * v + (1 - mu) * dense_step_direction(window, damp, g)
        w = w - lr * v
        got = np.concatenate([a.detach().numpy().ravel(), b.detach().numpy()])
        np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-13)


def test_sparse_keeps_zero_weights_frozen():
    rng = np.random.default_rng(4)
    start = np.array([0.0, 1.0, 0.0, -2.0, 3.0])
    kept = start != 0
    w = torch.nn.Parameter(torch.tensor(start))
    opt = MFAC([w], lr=0.1, num_grads=2, damp=0.1, sparse=True)
    assert opt.state[w]["grads"].shape == (2, 3)
    expected, window = start.copy(), np.zeros((2, 3))
    for k, g in enumerate(rng.standard_normal((3, 5))):
        feed(opt, [w], [g])
        window[k % 2] = g[kept]
        expected[kept] -= 0.1 * dense_step_direction(window, 0.1, g[kept])
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-12)
    assert (w.detach().numpy()[~kept] == 0).all()
    with pytest.raises(ValueError, match="all exactly zero"):
        MFAC([torch.nn.Parameter(torch.zeros(3))], sparse=True)


def train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(12)]

    def build():
        torch.manual_seed(5)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        return model, MFAC(model.parameters(), lr=0.05, num_grads=4, damp=1e-2, momentum=0.5, weight_decay=1e-3)

    model, opt = build()
    train(model, opt, batches)

    model2, opt2 = build()
    train(model2, opt2, batches[:7])
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "optimizer": opt2.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model3, opt3 = build()
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["optimizer"])
    train(model3, opt3, batches[7:])
    for p, q in zip(model.parameters(), model3.parameters()):
        assert torch.equal(p, q)
    for key, value in opt.state[next(model.parameters())].items():
        assert torch.equal(value, opt3.state[next(model3.parameters())][key]), key


def test_load_keeps_the_window_dtypes_of_a_low_precision_model():
    w = torch.nn.Parameter(torch.tensor([0.0, 1.0, 2.0], dtype=torch.bfloat16))
    opt = MFAC([w], num_grads=2, sparse=True)
    w.grad = torch.ones(3, dtype=torch.bfloat16)
    opt.step()
    state = opt.state_dict()
    other = MFAC([torch.nn.Parameter(w.detach().clone())], num_grads=2, sparse=True)
    other.load_state_dict(state)
    loaded = other.state[other.param_groups[0]["params"][0]]
    assert loaded["grads"].dtype == torch.float32 and loaded["mask"].dtype == torch.bool
    assert int(loaded["step"]) == 1
    with pytest.raises(ValueError, match=r"different M-FAC window.*num_grads=3"):
        MFAC([torch.nn.Parameter(w.detach().clone())], num_grads=3, sparse=True).load_state_dict(state)


def test_nonfinite_gradient_is_refused():
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = MFAC([w], lr=0.1, num_grads=3, damp=0.1)
    feed(opt, [w], [np.arange(4.0)])
    before = {k: v.clone() for k, v in opt.state[w].items()}
    weights = w.detach().clone()
    feed(opt, [w], [np.array([1.0, np.nan, 0.0, 0.0])])
    assert torch.equal(w.detach(), weights)
    assert int(opt.state[w]["skipped"]) == 1
    for key in ("grads", "gram", "step"):
        assert torch.equal(opt.state[w][key], before[key])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_grads": 0}, "num_grads must be an integer >= 1"),
        ({"damp": 0.0}, "damp must be a positive"),
        ({"damp": -1e-3}, "damp must be a positive"),
        ({"lr": 0.0}, "lr must be a positive"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MFAC([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_sparse_must_be_a_bool():
    with pytest.raises(TypeError, match="sparse must be true or false"):
        MFAC([torch.nn.Parameter(torch.ones(2))], sparse=1)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="no parameters"):
        MFAC([{"params": []}])
    opt = MFAC([torch.nn.Parameter(torch.ones(3))], num_grads=2)
    with pytest.raises(ValueError, match=r"x must be a vector of shape \(3,\)"):
        opt.ihvp(torch.ones(4))
    with pytest.raises(ValueError, match="fixed set of parameters"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})
    with pytest.raises(ValueError, match="floating-point"):
        MFAC([torch.ones(2, dtype=torch.int64)])


# ---------------------------------------------------------------------------- the solver


def quadratic():
    A = np.diag([1.0, 10.0, 100.0])
    return SmoothProblem(lambda x: 0.5 * x @ A @ x, lambda x: A @ x, np.ones(3), name="quadratic")


def test_solver_first_step_closed_form():
    p = quadratic()
    res = optkit.solve(p, "mfac", max_iter=1, lr=0.1, damp=2.0, num_grads=2, schedule="constant", warmup=0.0)
    g = np.array([1.0, 10.0, 100.0])
    np.testing.assert_allclose(res.x, 1.0 - 0.1 * g / (2.0 + g @ g / 2), rtol=1e-12)


def test_solver_trains_a_softmax_classifier():
    # 5 epochs of minibatches of 64 from log(10) = 2.3: M-FAC reaches 0.32 (SGD, same lr: 0.51)
    res = optkit.solve(
        "ml/softmax/digits", "mfac", lr=0.05, num_grads=32, damp=1e-2, batch_size=64, epochs=5, eval_every=10**6
    )
    assert res.status is optkit.Status.MAX_ITER and res.trace[0]["fun"] > 2.0
    assert res.fun < 0.4 and res.metrics["test_accuracy"] > 0.9


def test_solver_option_checks():
    with pytest.raises(ValueError, match="num_grads must be an integer >= 1"):
        optkit.get_solver("mfac:num_grads=0")
    with pytest.raises(ValueError, match="damp must be a positive"):
        optkit.get_solver("mfac:damp=0")
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        optkit.get_solver("mfac:momentum=1")


def test_solver_nan_loss_keeps_the_last_finite_weights():
    p = SmoothProblem(lambda x: math.nan if x[0] < 0.5 else 0.5 * float(x @ x), lambda x: x, np.ones(2))
    res = optkit.solve(p, "mfac", max_iter=10, lr=0.9, damp=1.0, num_grads=4, schedule="constant", warmup=0.0)
    assert res.status is optkit.Status.NONFINITE and res.nit == 2
    # the loss at x1 = 1 - 0.9 g/(λ + ‖g‖²/m) = 0.4 is NaN: the run ends there
    np.testing.assert_allclose(res.x, 1.0 - 0.9 / (1.0 + 2.0 / 4), rtol=1e-12)

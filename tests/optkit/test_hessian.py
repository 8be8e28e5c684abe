"""Tests of optkit.hessian.HessianOperator: against torch.func.hessian of hand-written models, a
problem's dense Hessian (numpy and torch), the dense Gauss-Newton matrix, the vmap and loop
paths against each other, the adjoint, and the input checks."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from optkit import SmoothProblem
from optkit.hessian import HessianOperator
from optkit.linop import dottest, is_psd, is_symmetric, materialize

torch = pytest.importorskip("torch")
func = torch.func

TOL = {"rtol": 1e-10, "atol": 1e-12}
METHODS = ["double-backward", "forward-over-reverse"]
FOR = "forward-over-reverse"
# torch.func.hessian (the reference) loads torch's forward-mode decompositions through torch.jit.script
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:DeprecationWarning")


# ------------------------------------------------------------------ a small tanh MLP, twice
class MLP(torch.nn.Module):
    """3 -> 4 (tanh) -> 2, float64; 26 parameters."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = torch.nn.Linear(3, 4, dtype=torch.float64)
        self.l2 = torch.nn.Linear(4, 2, dtype=torch.float64)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


SHAPES = {"l1.weight": (4, 3), "l1.bias": (4,), "l2.weight": (2, 4), "l2.bias": (2,)}


def explicit_outputs(weights, X):
    """The MLP written out by hand: ``weights`` maps names to tensors."""
    h = torch.tanh(X @ weights["l1.weight"].T + weights["l1.bias"])
    return h @ weights["l2.weight"].T + weights["l2.bias"]


def unflatten(model, names, w):
    """Every weight of ``model``, the ``names`` ones taken from the flat ``w`` in order."""
    weights = {k: p.detach() for k, p in model.named_parameters()}
    sizes = [int(np.prod(SHAPES[k])) for k in names]
    for k, part in zip(names, torch.split(w, sizes)):
        weights[k] = part.reshape(SHAPES[k])
    return weights


def flat(model, names):
    params = dict(model.named_parameters())
    return torch.cat([params[k].detach().reshape(-1) for k in names])


def data(seed: int = 1, batches: int = 3, size: int = 6):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batches * size, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (batches * size,), generator=g)
    Y = torch.randn(batches * size, 2, generator=g, dtype=torch.float64)
    return [
        (X[i * size : (i + 1) * size], y[i * size : (i + 1) * size], Y[i * size : (i + 1) * size])
        for i in range(batches)
    ]


def ce_loss(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def sq_loss(model, batch):
    return ((model(batch[0]) - batch[2]) ** 2).sum(dim=1).mean()


ALL = list(SHAPES)


# ------------------------------------------------------------------ from_model: the Hessian
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("names", [None, ["l2.weight", "l1.bias"]])
def test_model_hessian_equals_torch_func_hessian(names, method):
    model, batches = MLP(), data()
    H = HessianOperator.from_model(model, ce_loss, batches, params=names, method=method)
    order = ALL if names is None else names

    def mean_loss(w):
        weights = unflatten(model, order, w)
        losses = [torch.nn.functional.cross_entropy(explicit_outputs(weights, X), y) for X, y, _ in batches]
        return sum(losses) / len(losses)

    w0 = flat(model, order)
    expected = func.hessian(mean_loss)(w0)
    n = w0.shape[0]
    assert H.shape == (n, n) and H.dtype == torch.float64 and H.backend == "torch" and H.device == "cpu"
    assert H.tags == frozenset({"symmetric"}) and H.param_names == tuple(order)
    assert_allclose(materialize(H).numpy(), expected.numpy(), **TOL)
    assert H.vectorized is (True if method == FOR else None)
    v = torch.linspace(-1, 1, n, dtype=torch.float64)
    assert_allclose((H @ v).numpy(), (expected @ v).numpy(), **TOL)
    assert_allclose(H.gradient().numpy(), func.grad(mean_loss)(w0).numpy(), **TOL)
    assert_allclose(H.point.numpy(), w0.numpy(), rtol=0, atol=0)
    # plain tensors: no autograd graph through the model's other, trainable parameters
    assert not (H @ v).requires_grad and not materialize(H).requires_grad and not H.gradient().requires_grad


@pytest.mark.parametrize("method", METHODS)
def test_model_hessian_is_symmetric_and_passes_dottest(method):
    H = HessianOperator.from_model(MLP(), sq_loss, data(), method=method)
    assert is_symmetric(H) and H.H is H
    assert dottest(H, rtol=1e-12)
    M = materialize(H)
    assert_allclose(M.numpy(), M.T.numpy(), **TOL)
    # the squared loss of a tanh network at random weights is not convex: a negative eigenvalue
    assert float(torch.linalg.eigvalsh(M)[0]) < -1e-6


@pytest.mark.parametrize("method", METHODS)
def test_model_weights_are_not_modified(method):
    model = MLP()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    H = HessianOperator.from_model(model, ce_loss, data(), method=method)
    materialize(H)
    H.gradient()
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before[k]) and p.grad is None


def test_vmap_path_equals_loop_path(monkeypatch):
    batches = data()
    V = torch.randn(26, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    H = HessianOperator.from_model(MLP(), ce_loss, batches, method=FOR)
    vectorized = H @ V
    assert H.vectorized is True

    def refuse(*args, **kwargs):
        raise RuntimeError("vmap is not supported here")

    monkeypatch.setattr(func, "vmap", refuse)
    L = HessianOperator.from_model(MLP(), ce_loss, batches, method=FOR)
    looped = L @ V
    assert L.vectorized is False
    assert_allclose(looped.numpy(), vectorized.numpy(), **TOL)


class _Cube(torch.autograd.Function):
    """``x**3`` with hand-written backward and jvp and no vmap rule: vmap refuses it."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * t


def test_model_that_vmap_refuses_falls_back_to_the_loop():
    model, batches = MLP(), data()

    def cube_loss(m, batch):
        return _Cube.apply(m(batch[0])).mean()

    with pytest.raises(RuntimeError):
        func.vmap(lambda t: _Cube.apply(t))(torch.ones(2, 2, dtype=torch.float64))
    H = HessianOperator.from_model(model, cube_loss, batches, method=FOR)

    def mean_loss(w):
        weights = unflatten(model, ALL, w)
        return sum((explicit_outputs(weights, X) ** 3).mean() for X, _, _ in batches) / len(batches)

    assert_allclose(materialize(H).numpy(), func.hessian(mean_loss)(flat(model, ALL)).numpy(), **TOL)
    assert H.vectorized is False


# ------------------------------------------------------------------ from_model: Gauss-Newton
def outputs_fn(model, batch):
    return model(batch[0])


def ce_on_outputs(outputs, batch):
    return torch.nn.functional.cross_entropy(outputs, batch[1])


@pytest.mark.parametrize("method", METHODS)
def test_ggn_equals_dense_jt_h_j(method):
    model, batches = MLP(), data()
    G = HessianOperator.from_model(
        model, None, batches, kind="ggn", method=method, outputs_fn=outputs_fn, loss_on_outputs=ce_on_outputs
    )
    w0 = flat(model, ALL)
    expected = torch.zeros(26, 26, dtype=torch.float64)

    def jt_h_j(X, y):
        out = explicit_outputs(unflatten(model, ALL, w0), X)
        J = func.jacrev(lambda w: explicit_outputs(unflatten(model, ALL, w), X).reshape(-1))(w0)
        H_out = func.hessian(lambda o: torch.nn.functional.cross_entropy(o.reshape(out.shape), y))(out.reshape(-1))
        return J.T @ H_out @ J

    for X, y, _ in batches:
        expected += jt_h_j(X, y) / len(batches)
    M = materialize(G)
    assert G.tags == frozenset({"symmetric", "psd"}) and is_psd(G)
    assert_allclose(M.numpy(), expected.numpy(), **TOL)
    assert float(torch.linalg.eigvalsh(M)[0]) > -1e-12
    assert dottest(G, rtol=1e-12)
    # the GGN is not the Hessian of this non-linear model
    H = materialize(HessianOperator.from_model(model, ce_loss, batches))
    assert float((H - M).abs().max()) > 1e-3
    # with loss_fn None, the loss of gradient() is loss_on_outputs(outputs_fn(...))
    assert_allclose(G.gradient().numpy(), HessianOperator.from_model(model, ce_loss, batches).gradient().numpy(), **TOL)


@pytest.mark.parametrize("method", METHODS)
def test_ggn_equals_hessian_for_linear_model_and_squared_loss(method):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64))
        for _ in range(2)
    ]

    def sq_on_outputs(outputs, batch):
        return ((outputs - batch[1]) ** 2).sum(dim=1).mean()

    G = HessianOperator.from_model(
        model, None, batches, kind="ggn", method=method, outputs_fn=outputs_fn, loss_on_outputs=sq_on_outputs
    )
    H = HessianOperator.from_model(model, lambda m, b: sq_on_outputs(m(b[0]), b), batches, method=method)
    MG, MH = materialize(G), materialize(H)
    assert_allclose(MG.numpy(), MH.numpy(), **TOL)
    # closed form for the weight block: (2/B) sum_b X_bᵀX_b/7 on each output row (kron with I_3)
    XtX = sum(X.T @ X / 7 for X, _ in batches) / 2
    assert_allclose(MH[:12, :12].numpy(), np.kron(np.eye(3), 2 * XtX.numpy()), **TOL)


@pytest.mark.parametrize("method", METHODS)
def test_loss_linear_in_the_weights_has_a_zero_hessian(method):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3, dtype=torch.float64)
    X = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    H = HessianOperator.from_model(model, lambda m, b: m(b).sum(), [X], method=method)
    assert_allclose(materialize(H).numpy(), np.zeros((15, 15)), rtol=0, atol=0)
    # d/dW of sum(X Wᵀ + b) = column sums of X on every row; d/db = 5 per output
    expected = np.concatenate([np.tile(X.sum(0).numpy(), 3), np.full(3, 5.0)])
    assert_allclose(H.gradient().numpy(), expected, **TOL)


def test_double_backward_operator_keeps_the_weights_of_its_construction():
    model, batches = MLP(), data()
    H = HessianOperator.from_model(model, ce_loss, batches)
    before = materialize(H)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    assert_allclose(materialize(H).numpy(), before.numpy(), rtol=0, atol=0)
    moved = materialize(HessianOperator.from_model(model, ce_loss, batches))
    assert float((moved - before).abs().max()) > 1e-3


# ------------------------------------------------------------------ from a SmoothProblem
def logistic(backend: str):
    from problems.linear_models import LogisticRegression

    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 5))
    y = np.where(rng.standard_normal(40) > 0, 1.0, -1.0)
    p = LogisticRegression(A, y, lam=0.1, bias=True)
    return p if backend == "numpy" else p.to("torch", dtype="float64")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_problem_hessian_equals_dense_hessian(backend):
    p = logistic(backend)
    x = p.x0 + 0.3
    H = HessianOperator(p, x)
    assert H.shape == (6, 6) and H.backend == backend and H.dtype == p.dtype and H.tags == frozenset({"symmetric"})
    with p.uncounted():
        dense = p.hess(x)
    M = materialize(H)
    assert p.counters["hvp"] == 6  # one counted product per column
    to_np = (lambda a: a.numpy()) if backend == "torch" else np.asarray
    assert_allclose(to_np(M), to_np(dense), **TOL)
    assert dottest(H, rtol=1e-12) and H.H is H
    assert_allclose(to_np(H.gradient()), to_np(p._g(x)), **TOL)
    assert H.point is x and H.param_names is None and H.vectorized is None


def test_problem_from_callables_numpy():
    A = np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]])
    p = SmoothProblem(lambda x: x @ A @ x / 2, lambda x: A @ x, np.zeros(3), hvp=lambda x, v: A @ v)
    H = HessianOperator(p, np.ones(3))
    assert_allclose(materialize(H), A, **TOL)
    assert_allclose(H.matmat(np.eye(3)[:, :0]), np.zeros((3, 0)))
    assert_allclose(H @ np.array([1.0, 0.0, 0.0]), A[:, 0], **TOL)


# ------------------------------------------------------------------ bad input
def test_problem_errors():
    p = SmoothProblem(lambda x: float(x @ x), lambda x: 2 * x, np.zeros(3))
    with pytest.raises(ValueError, match="'hvp' capability"):
        HessianOperator(p, np.zeros(3))
    q = SmoothProblem(lambda x: float(x @ x), lambda x: 2 * x, np.zeros(3), hvp=lambda x, v: 2 * v)
    with pytest.raises(TypeError, match="problem must be an optkit.SmoothProblem"):
        HessianOperator("quadratic", np.zeros(3))
    with pytest.raises(ValueError, match=r"x must have shape \(3,\)"):
        HessianOperator(q, np.zeros(4))
    with pytest.raises(TypeError, match="x must be a numpy array"):
        HessianOperator(q, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be a numpy array"):
        HessianOperator(q, [0.0, 0.0, 0.0])


def test_model_errors():
    model, batches = MLP(), data()
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator.from_model(model, lambda m, b: m(b[0]).sum(dim=1), batches)
    with pytest.raises(TypeError, match="loss_fn must return a scalar torch.Tensor"):
        HessianOperator.from_model(model, lambda m, b: 1.0, batches)
    with pytest.raises(ValueError, match="batches must hold at least one batch"):
        HessianOperator.from_model(model, ce_loss, [])
    with pytest.raises(TypeError, match="batches must be an iterable of batches"):
        HessianOperator.from_model(model, ce_loss, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"unknown parameter names \['l3.weight'\]"):
        HessianOperator.from_model(model, ce_loss, batches, params=["l1.weight", "l3.weight"])
    with pytest.raises(ValueError, match="must not repeat"):
        HessianOperator.from_model(model, ce_loss, batches, params=["l1.bias", "l1.bias"])
    with pytest.raises(ValueError, match="at least one parameter"):
        HessianOperator.from_model(model, ce_loss, batches, params=[])
    with pytest.raises(TypeError, match="sequence of parameter names"):
        HessianOperator.from_model(model, ce_loss, batches, params="l1.bias")
    with pytest.raises(ValueError, match="method must be one of 'double-backward', 'forward-over-reverse'"):
        HessianOperator.from_model(model, ce_loss, batches, method="reverse")
    with pytest.raises(ValueError, match="kind must be one of 'hessian', 'ggn'"):
        HessianOperator.from_model(model, ce_loss, batches, kind="fisher")
    with pytest.raises(ValueError, match="needs both outputs_fn"):
        HessianOperator.from_model(model, ce_loss, batches, kind="ggn", outputs_fn=outputs_fn)
    with pytest.raises(ValueError, match="loss_on_outputs must return a scalar"):
        HessianOperator.from_model(
            model, None, batches, kind="ggn", outputs_fn=outputs_fn, loss_on_outputs=lambda o, b: o
        )
    with pytest.raises(ValueError, match="loss_fn is required"):
        HessianOperator.from_model(model, None, batches)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        HessianOperator.from_model(model, "ce", batches)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        HessianOperator.from_model(lambda x: x, ce_loss, batches)
    frozen = MLP()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        HessianOperator.from_model(frozen, ce_loss, batches)
    # frozen parameters may still be named explicitly
    assert HessianOperator.from_model(frozen, ce_loss, batches, params=["l2.bias"]).shape == (2, 2)
    mixed = MLP()
    mixed.l2.float()
    with pytest.raises(ValueError, match="share one dtype and device"):
        HessianOperator.from_model(mixed, lambda m, b: m(b[0].float()).sum(), batches)
    H = HessianOperator.from_model(model, ce_loss, batches)
    with pytest.raises(TypeError, match="dtype"):
        H @ torch.ones(26, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"expects x of shape \(26,\)"):
        H @ torch.ones(25, dtype=torch.float64)


# ------------------------------------------------------------------ with the spectral estimators
def test_estimators_run_on_both_operators():
    from optkit.spectral import top_eigenpairs

    H = HessianOperator.from_model(MLP(), ce_loss, data())
    exact = np.linalg.eigvalsh(materialize(H).numpy())[::-1][:2]
    pairs = top_eigenpairs(H, k=2)
    assert pairs.converged and pairs.vectors.dtype == torch.float64
    assert_allclose(pairs.values, exact, rtol=1e-8)
    p = logistic("numpy")
    x = p.x0 + 0.3
    with p.uncounted():
        exact = np.linalg.eigvalsh(p.hess(x))[0]
    pairs = top_eigenpairs(HessianOperator(p, x), k=1, which="SA")
    assert_allclose(pairs.values, [exact], rtol=1e-8)
    # every product went through the problem's counted hvp; the residuals take none more
    assert p.counters["hvp"] == pairs.steps

"""Tests of optkit.linop: every operator form against its dense matrix, dot tests, algebra
properties (hypothesis), numpy/torch parity, scipy interop and error messages."""

from __future__ import annotations

import gc
import pickle
import subprocess
import sys
import warnings
import weakref

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from optkit.linop import (
    Block,
    Dense,
    Diagonal,
    FunctionOperator,
    Identity,
    Kronecker,
    LinearOperator,
    LowRank,
    Sparse,
    aslinearoperator,
    diagonal,
    dottest,
    is_diagonal,
    is_psd,
    is_symmetric,
    materialize,
)

TOL = {"rtol": 1e-10, "atol": 1e-12}


def mat(rng, m, n, cplx):
    M = rng.standard_normal((m, n))
    return M + 1j * rng.standard_normal((m, n)) if cplx else M


def vec(rng, n, cplx):
    return mat(rng, n, 1, cplx)[:, 0]


def sparse_mat(rng, m, n, cplx):
    M = mat(rng, m, n, cplx)
    M[rng.random((m, n)) < 0.5] = 0
    return M


# ----------------------------------------------------------------------------- operator table
# each factory: (rng, cplx) -> (operator, dense matrix); RECT ones are 6x4, SQUARE ones 6x6
def _function(rng, c, m, n):
    M = mat(rng, m, n, c)
    return FunctionOperator((m, n), lambda x: M @ x, lambda y: M.conj().T @ y, dtype=M.dtype), M


def _kron(rng, c, shapeA, shapeB):
    A, B = mat(rng, *shapeA, c), sparse_mat(rng, *shapeB, c)
    return Kronecker(Dense(A), Sparse(sp.csr_array(B))), np.kron(A, B)


def _block_rect(rng, c):
    M11, M21, M22 = mat(rng, 2, 1, c), mat(rng, 4, 1, c), mat(rng, 4, 3, c)
    dense = np.block([[M11, np.zeros((2, 3))], [M21, M22]])
    return Block([[Dense(M11), None], [M21, Sparse(sp.csr_array(M22))]]), dense


def _block_square(rng, c):
    M11, M12, M22 = mat(rng, 2, 2, c), mat(rng, 2, 4, c), mat(rng, 4, 4, c)
    dense = np.block([[M11, M12], [np.zeros((4, 2)), M22]])
    return Block([[M11, Dense(M12)], [None, Dense(M22)]]), dense


def _lowrank(rng, c, m, n, with_s=True):
    U, V = mat(rng, m, 2, c), mat(rng, n, 2, c)
    S = vec(rng, 2, c) if with_s else np.ones(2)
    return LowRank(U, S if with_s else None, V), U @ np.diag(S) @ V.conj().T


def _lowrank_sym(rng, c):
    U, S = mat(rng, 6, 2, c), np.abs(vec(rng, 2, False)) + 0.1
    return LowRank(U, S), U @ np.diag(S) @ U.conj().T


def _sum(rng, c, m, n):
    A, B = mat(rng, m, n, c), sparse_mat(rng, m, n, c)
    return Dense(A) + Sparse(sp.csr_array(B)), A + B


def _diff(rng, c, m, n):
    A, B = mat(rng, m, n, c), mat(rng, m, n, c)
    return Dense(A) - aslinearoperator(B), A - B


def _product(rng, c, m, n):
    A, B = mat(rng, m, 5, c), sparse_mat(rng, 5, n, c)
    return Dense(A) @ Sparse(sp.coo_array(B)), A @ B


def _scaled(rng, c, m, n, s):
    A = mat(rng, m, n, c)
    return s * Dense(A), s * A


def _nested(rng, c, m, n):
    A, B, C = mat(rng, n, m, c), mat(rng, m, n, c), mat(rng, n, n, c)
    op = (Dense(A).H + 0.5 * Dense(B)) @ (Dense(C).T / 4) - Dense(B)
    return op, (A.conj().T + 0.5 * B) @ (C.T / 4) - B


def _scipy(rng, c, m, n):
    M = mat(rng, m, n, c)
    return aslinearoperator(spla.aslinearoperator(M)), M


def _wrap(build, draw, transform=lambda M: M):
    """A factory building the operator ``build(M)`` for the drawn matrix ``M``; dense: ``transform(M)``."""

    def make(r, c):
        M = draw(r, c)
        return build(M), transform(M)

    return make


def _derived(factory, unary, dense_unary):
    """A factory for ``unary(op)`` of another factory's operator."""

    def make(r, c):
        op, M = factory(r, c)
        return unary(op), dense_unary(M)

    return make


def _dense_draw(m, n, sparse=False):
    return lambda r, c: (sparse_mat if sparse else mat)(r, m, n, c)


def _diag_plus_identity(r, c):
    d = vec(r, 6, c)
    return Diagonal(d) + 2 * Identity(6), np.diag(d) + 2 * np.eye(6)


def _builtin_sum(r, c):
    A, B, d = mat(r, 6, 6, c), sparse_mat(r, 6, 6, c), vec(r, 6, c)
    return sum([Dense(A), Sparse(sp.csr_array(B)), Diagonal(d)]), A + B + np.diag(d)


RECT = {
    "dense": _wrap(Dense, _dense_draw(6, 4)),
    "sparse_csr": _wrap(lambda M: Sparse(sp.csr_array(M)), _dense_draw(6, 4, sparse=True)),
    "sparse_coo_matrix": _wrap(lambda M: aslinearoperator(sp.coo_matrix(M)), _dense_draw(6, 4, sparse=True)),
    "lowrank": lambda r, c: _lowrank(r, c, 6, 4),
    "lowrank_no_s": lambda r, c: _lowrank(r, c, 6, 4, with_s=False),
    "block": _block_rect,
    "kronecker": lambda r, c: _kron(r, c, (2, 2), (3, 2)),
    "function": lambda r, c: _function(r, c, 6, 4),
    "scipy_linop": lambda r, c: _scipy(r, c, 6, 4),
    "sum": lambda r, c: _sum(r, c, 6, 4),
    "difference": lambda r, c: _diff(r, c, 6, 4),
    "product": lambda r, c: _product(r, c, 6, 4),
    "scaled": lambda r, c: _scaled(r, c, 6, 4, 2.5),
    "scaled_complex": lambda r, c: _scaled(r, c, 6, 4, 1.5 - 2j),
    "negated": _wrap(lambda M: -Dense(M), _dense_draw(6, 4), lambda M: -M),
    "divided": _wrap(lambda M: Dense(M) / 4, _dense_draw(6, 4), lambda M: M / 4),
    "right_scaled": _wrap(lambda M: Dense(M) * np.float64(-3), _dense_draw(6, 4), lambda M: -3 * M),
    "adjoint": _wrap(lambda M: Dense(M).H, _dense_draw(4, 6), lambda M: M.conj().T),
    "transpose": _wrap(lambda M: Sparse(sp.csr_array(M)).T, _dense_draw(4, 6, sparse=True), lambda M: M.T),
    "adjoint_of_product": _derived(lambda r, c: _product(r, c, 4, 6), lambda op: op.H, lambda M: M.conj().T),
    "transpose_of_sum": _derived(lambda r, c: _sum(r, c, 4, 6), lambda op: op.T, lambda M: M.T),
    "nested": lambda r, c: _nested(r, c, 6, 4),
}
SQUARE = {
    "dense_sq": _wrap(Dense, _dense_draw(6, 6)),
    "sparse_sq": _wrap(lambda M: Sparse(sp.csr_matrix(M)), _dense_draw(6, 6, sparse=True)),
    "diagonal": _wrap(Diagonal, lambda r, c: vec(r, 6, c), np.diag),
    "identity": lambda r, c: (Identity(6, dtype=np.complex128 if c else np.float64), np.eye(6)),
    "lowrank_sym": _lowrank_sym,
    "block_sq": _block_square,
    "kronecker_sq": lambda r, c: _kron(r, c, (2, 2), (3, 3)),
    "function_sq": lambda r, c: _function(r, c, 6, 6),
    "sum_sq": lambda r, c: _sum(r, c, 6, 6),
    "product_sq": lambda r, c: _product(r, c, 6, 6),
    "scaled_sq": lambda r, c: _scaled(r, c, 6, 6, -0.5),
    "nested_sq": lambda r, c: _nested(r, c, 6, 6),
    "diag_plus_identity": _diag_plus_identity,
    "builtin_sum": _builtin_sum,
}
ALL = {**RECT, **SQUARE}


def make(name, seed=0, cplx=False):
    return ALL[name](np.random.default_rng(seed), cplx)


@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_operator_matches_dense(name, cplx):
    op, M = make(name, 1, cplx)
    rng = np.random.default_rng(2)
    m, n = M.shape
    x, X, y, Y = vec(rng, n, cplx), mat(rng, n, 3, cplx), vec(rng, m, cplx), mat(rng, m, 2, cplx)
    MH = M.conj().T
    assert op.shape == M.shape
    assert op.backend == "numpy" and op.device == "cpu"
    if cplx and name != "identity":
        assert np.dtype(op.dtype).kind == "c"
    assert_allclose(op.matvec(x), M @ x, **TOL)
    assert_allclose(op @ x, M @ x, **TOL)
    assert_allclose(op.matmat(X), M @ X, **TOL)
    assert_allclose(op @ X, M @ X, **TOL)
    assert_allclose(op.rmatvec(y), MH @ y, **TOL)
    assert_allclose(op.rmatmat(Y), MH @ Y, **TOL)
    assert_allclose(op.H.matvec(y), MH @ y, **TOL)
    assert_allclose(op.adjoint().matmat(Y), MH @ Y, **TOL)
    assert_allclose(op.T.matvec(y), M.T @ y, **TOL)
    assert_allclose(op.T.rmatvec(x), M.conj() @ x, **TOL)
    assert_allclose(op.transpose().matmat(Y), M.T @ Y, **TOL)
    assert_allclose(y @ op, y @ M, **TOL)  # ndarray @ operator defers to __rmatmul__
    assert_allclose(Y.T @ op, Y.T @ M, **TOL)
    assert_allclose(materialize(op), M, **TOL)
    assert_allclose(materialize(op.H), MH, **TOL)
    assert_allclose(materialize(op.T), M.T, **TOL)
    assert_allclose(diagonal(op), np.diagonal(M), **TOL)
    assert_allclose(diagonal(op.H), np.diagonal(MH), **TOL)
    assert op.matvec(x).shape == (m,) and op.matmat(X).shape == (m, 3)
    # scipy's contract: columns in, columns out; array-likes; dot
    assert_allclose(op.matvec(x[:, None]), (M @ x)[:, None], **TOL)
    assert_allclose(op.rmatvec(y[:, None]), (MH @ y)[:, None], **TOL)
    assert_allclose(op.matvec(x.tolist()), M @ x, **TOL)
    assert_allclose(op @ X.tolist(), M @ X, **TOL)
    assert_allclose(op.dot(x[:, None]), (M @ x)[:, None], **TOL)
    assert_allclose(op.dot(X), M @ X, **TOL)
    assert_allclose(materialize(op.dot(Identity(n, dtype=op.dtype))), M, **TOL)


@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_dottest_every_form(name, cplx):
    op, _ = make(name, 3, cplx)
    assert dottest(op) is True
    assert dottest(op.H, seed=5) is True
    assert dottest(op.T, seed=6) is True


def test_dottest_catches_wrong_adjoints():
    rng = np.random.default_rng(0)
    M = mat(rng, 6, 4, False)
    off = FunctionOperator((6, 4), lambda x: M @ x, lambda y: 1.01 * (M.T @ y))
    with pytest.raises(AssertionError, match=r"dot test failed.*<A x, y> = .* but <x, A\^H y> = "):
        dottest(off)
    C = mat(rng, 6, 4, True)  # transpose instead of conjugate transpose: the classic complex bug
    no_conj = FunctionOperator((6, 4), lambda x: C @ x, lambda y: C.T @ y, dtype=np.complex128)
    with pytest.raises(AssertionError, match="dot test failed"):
        dottest(no_conj)


def test_dottest_float32_operator_passes():
    M = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
    assert dottest(Dense(M))


# ----------------------------------------------------------------------------- hypothesis
square_names = st.sampled_from(sorted(SQUARE))
scalars = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False), st.complex_numbers(max_magnitude=1e3, allow_nan=False, allow_infinity=False)
)


def _close(a, b, scale=1.0):
    assert_allclose(a, b, rtol=1e-9, atol=1e-9 * scale)


@given(a=square_names, b=square_names, seed=st.integers(0, 2**16), cplx=st.booleans())
def test_adjoint_of_sum_is_sum_of_adjoints(a, b, seed, cplx):
    A, MA = make(a, seed, cplx)
    B, MB = make(b, seed + 1, cplx)
    _close(materialize((A + B).H), materialize(A.H + B.H), np.abs(MA).max() + np.abs(MB).max())
    _close(materialize((A + B).H), (MA + MB).conj().T, np.abs(MA).max() + np.abs(MB).max())


@given(a=square_names, b=square_names, seed=st.integers(0, 2**16), cplx=st.booleans())
def test_product_applies_in_order(a, b, seed, cplx):
    A, MA = make(a, seed, cplx)
    B, MB = make(b, seed + 1, cplx)
    x = vec(np.random.default_rng(seed + 2), 6, cplx)
    _close((A @ B) @ x, A @ (B @ x), np.abs(MA @ MB).sum() * np.abs(x).max())
    _close((A @ B).H @ x, B.H @ (A.H @ x), np.abs(MA @ MB).sum() * np.abs(x).max())


@given(a=square_names, c=scalars, seed=st.integers(0, 2**16), cplx=st.booleans())
def test_scaling_commutes_with_application(a, c, seed, cplx):
    A, MA = make(a, seed, cplx)
    x = vec(np.random.default_rng(seed + 2), 6, cplx)
    scale = (abs(c) + 1) * np.abs(MA).sum() * np.abs(x).max()
    _close((c * A) @ x, c * (A @ x), scale)
    _close((A * c) @ x, c * (A @ x), scale)
    _close((c * A).H @ x, np.conj(c) * (A.H @ x), scale)


@given(a=st.sampled_from(sorted(ALL)), seed=st.integers(0, 2**16), cplx=st.booleans())
def test_double_adjoint_is_the_operator(a, seed, cplx):
    A, M = make(a, seed, cplx)
    assert A.H.H is A
    _close(materialize(A.H.H), M, np.abs(M).max())
    _close(materialize(A.T.T), M, np.abs(M).max())


# ----------------------------------------------------------------------------- tags and queries
def test_tags_propagate_where_valid():
    rng = np.random.default_rng(0)
    P = Diagonal(np.array([1.0, 2.0, 3.0]))
    Q = Dense(np.eye(3) * 2, tags={"psd"})
    N = Dense(rng.standard_normal((3, 3)))
    assert P.tags == {"diagonal", "symmetric", "psd"}
    assert is_psd(P + Q) and is_symmetric(P + Q)
    assert is_psd(2.0 * P) and not is_psd(-2.0 * P) and is_symmetric(-2.0 * P)
    assert not is_symmetric(1j * P) and is_diagonal(1j * P)
    assert not is_psd(P - Q) and is_symmetric(P - Q)
    assert not is_symmetric(P + N)
    assert Q.H is Q and Q.T is Q  # a symmetric operator is its own adjoint
    assert is_psd(N.H @ N) and is_psd(N @ N.H) and not is_symmetric(N @ N)
    assert is_psd(P @ P) and is_diagonal(P @ P)
    assert is_psd(Kronecker(P, Q)) and not is_psd(Kronecker(P, N))
    assert is_psd(Block([[P, None], [None, Q]])) and not is_symmetric(Block([[P, N], [None, Q]]))
    assert is_psd(LowRank(rng.standard_normal((5, 2)), np.array([1.0, 2.0])))
    assert not is_psd(LowRank(rng.standard_normal((5, 2)), np.array([1.0, -2.0])))
    assert "low_rank" in (2 * LowRank(rng.standard_normal((5, 2)))).tags
    assert not is_symmetric(Diagonal(np.array([1j, 2.0])))
    assert "orthonormal" in Identity(3).tags and "orthonormal" not in (2 * Identity(3)).tags
    assert "psd" not in Diagonal(np.array([1.0, -1.0])).tags


def test_aslinearoperator_adds_tags_without_touching_the_original():
    A = Dense(np.eye(3))
    B = aslinearoperator(A, tags={"psd"})
    assert B is not A and is_psd(B) and not is_psd(A)
    assert aslinearoperator(A) is A
    assert_allclose(B @ np.ones(3), np.ones(3))


def test_queries_are_extensible_by_third_parties():
    class Ones(LinearOperator):
        def __init__(self, n):
            super().__init__((n, n), np.float64)

        def _matvec(self, x):
            return np.full(self.shape[0], x.sum())

        def _adjoint(self):
            return self

    @is_psd.register(Ones)
    def _(op):
        return True

    @diagonal.register(Ones)
    def _(op):
        return np.ones(op.shape[0])

    op = Ones(4)
    assert is_psd(op) and not is_psd(Dense(np.ones((4, 4))))
    assert_allclose(diagonal(op), np.ones(4))
    assert_allclose(materialize(op), np.ones((4, 4)))  # generic rule, through matmat -> matvec
    assert_allclose(op.rmatvec(np.arange(4.0)), np.full(4, 6.0))  # adjoint from _adjoint
    assert dottest(op)


def test_subclass_with_only_matmat_and_rmatvec():
    M = np.arange(12.0).reshape(4, 3)

    class MM(LinearOperator):
        def __init__(self):
            super().__init__(M.shape, M.dtype)

        def _matmat(self, X):
            return M @ X

        def _rmatvec(self, y):
            return M.T @ y

    op = MM()
    assert_allclose(op.matvec(np.ones(3)), M @ np.ones(3))
    assert_allclose(op.rmatmat(np.eye(4)), M.T)
    assert dottest(op)


def test_diagonal_fallback_probes_small_and_refuses_large():
    d = np.arange(1.0, 8.0)
    small = FunctionOperator((7, 7), lambda x: d * x, lambda y: d * y)
    assert_allclose(diagonal(small), d)
    large = FunctionOperator((5000, 5000), lambda x: x, lambda y: y)
    with pytest.raises(NotImplementedError, match="register"):
        diagonal(large)


def test_sparse_diagonal_is_efficient_for_large_operators():
    n = 200_000
    S = Sparse(sp.diags_array([np.arange(n, dtype=float)], offsets=[0], shape=(n, n), format="csr"))
    assert_allclose(diagonal(S + 2 * Identity(n))[:3], [2.0, 3.0, 4.0])


# ----------------------------------------------------------------------------- adjoint views, no cycles
@pytest.mark.parametrize("name", sorted(ALL))
def test_operator_is_freed_without_the_cycle_collector(name):
    gc.collect()
    gc.disable()  # only reference counting may free the operator (scipy's gh-10634)
    try:
        op, M = make(name, 0, True)
        view = op.H
        assert op.H is view and view.H is op  # one view while it lives; A.H.H is A
        assert is_psd(op.H @ op) and is_psd(op @ op.H)  # adjoint pairs are still recognised
        y = vec(np.random.default_rng(1), M.shape[0], True)
        assert_allclose(view @ y, M.conj().T @ y, **TOL)
        refs = [weakref.ref(op), weakref.ref(view)]
        del op, view
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_adjoint_hook_referring_to_its_operator_makes_no_cycle():
    M = np.arange(6.0).reshape(3, 2)

    class Hooked(LinearOperator):
        def __init__(self):
            super().__init__(M.shape, M.dtype)

        def _matvec(self, x):
            return M @ x

        def _adjoint(self):  # refers back to the operator, as scipy's MatrixLinearOperator did
            return FunctionOperator(self.shape[::-1], lambda y: M.T @ y, self.matvec)

    gc.collect()
    gc.disable()
    try:
        op = Hooked()
        assert_allclose(op.H @ np.ones(3), M.T @ np.ones(3))
        assert_allclose(op.rmatvec(np.ones(3)), M.T @ np.ones(3))
        assert op.H.H is op and dottest(op)
        ref = weakref.ref(op)
        del op
        assert ref() is None
    finally:
        gc.enable()


def test_operators_pickle_after_their_adjoint_was_used():
    A = Dense(np.arange(6.0).reshape(3, 2))
    view = A.H
    assert_allclose(A.rmatvec(np.ones(3)), view @ np.ones(3))
    B = pickle.loads(pickle.dumps(A))
    assert_allclose(B.H @ np.ones(3), [6.0, 9.0])
    assert_allclose(materialize(pickle.loads(pickle.dumps(A + 2 * A.H.H))), 3 * materialize(A))


# ----------------------------------------------------------------------------- FunctionOperator dtype
def test_function_operator_without_dtype_refuses_complex_results():
    rng = np.random.default_rng(0)
    C, R = mat(rng, 3, 2, True), mat(rng, 3, 2, False)
    y = vec(rng, 3, False)
    calls = []
    op = FunctionOperator((3, 2), lambda x: calls.append(1) or C @ x, lambda v: C.conj().T @ v)
    assert calls == [] and op.dtype == np.float64  # no probe call at construction
    with pytest.raises(TypeError, match=r"matvec returned complex128 .*pass dtype='complex128'"):
        op @ np.ones(2)
    # a real-labelled A.T is A.H: it is refused, not silently conjugated
    with pytest.raises(TypeError, match="rmatvec returned complex128"):
        op.T @ y
    with pytest.raises(TypeError, match="rmatvec returned complex128"):
        op.to("numpy").T.matmat(np.ones((3, 2)))
    good = FunctionOperator((3, 2), lambda x: C @ x, lambda v: C.conj().T @ v, dtype=np.complex128)
    assert_allclose(good.T @ y, C.T @ y, **TOL)
    # real callables: float64 without a dtype; complex vectors only once the dtype is given
    real = FunctionOperator((3, 2), lambda x: R @ x, lambda v: R.T @ v)
    assert_allclose(real.T @ y, R.T @ y, **TOL)
    with pytest.raises(TypeError, match=r"or dtype='float64' to apply a real operator to complex vectors"):
        real @ np.array([1j, 2.0])
    declared = FunctionOperator((3, 2), lambda x: R @ x, dtype=np.float64)
    assert_allclose(declared @ np.array([1j, 2.0]), R @ np.array([1j, 2.0]), **TOL)


def test_torch_function_operator_without_dtype_refuses_complex_results():
    torch = pytest.importorskip("torch")
    d = torch.tensor([1.0 + 1j, 2.0], dtype=torch.complex64)
    op = FunctionOperator((2, 2), lambda x: d * x, lambda x: d.conj() * x, backend="torch")
    assert op.dtype == torch.get_default_dtype()
    with pytest.raises(TypeError, match="matvec returned complex64"):
        op @ torch.ones(2)
    # moved from numpy, an operator without dtype keeps the check
    C = np.array([[1j, 0.0], [0.0, 1.0]])
    moved = FunctionOperator((2, 2), lambda x: C @ x, lambda v: C.conj().T @ v).to("torch")
    with pytest.raises(TypeError, match="complex128"):
        moved @ torch.ones(2, dtype=torch.float64)


# ----------------------------------------------------------------------------- scipy interop
def test_to_scipy_runs_scipy_cg():
    n = 20
    T = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(n, n), format="csr")
    op = Sparse(T) + Diagonal(np.full(n, 0.5))
    b = np.arange(1.0, n + 1)
    for A in (
        op.to_scipy(),
        Dense(materialize(op)).to_scipy(),
        FunctionOperator((n, n), op.matvec, op.rmatvec).to_scipy(),
    ):
        x, info = spla.cg(A, b, rtol=1e-12, atol=0.0)
        assert info == 0
        assert_allclose(x, np.linalg.solve(materialize(op), b), rtol=1e-9)
    S = op.to_scipy()
    assert_allclose(S.rmatvec(b), op.rmatvec(b), **TOL)
    assert_allclose(S.matmat(np.eye(n)), materialize(op), **TOL)
    assert_allclose(S @ b[:, None], (op @ b)[:, None], **TOL)


def test_scipy_linear_operator_without_dtype_is_wrapped():
    sc = spla.LinearOperator((3, 3), matvec=lambda x: 2 * x, rmatvec=lambda x: 2 * x, dtype=np.float64)
    op = aslinearoperator(sc)
    assert_allclose(op @ np.ones(3), 2 * np.ones(3))
    assert dottest(op)


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    A = Dense(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"expects x of shape \(2,\) or \(2, 1\), got \(3,\)"):
        A.matvec(np.ones(3))
    with pytest.raises(ValueError, match=r"expects X of shape \(2, k\), got \(3, 1\)"):
        A.matmat(np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"expects y of shape \(3,\) or \(3, 1\), got \(2,\)"):
        A.rmatvec(np.ones(2))
    with pytest.raises(ValueError, match=r"expects x of shape \(2,\), got \(2, 1, 1\)|1 or 2 dimensions"):
        A @ np.ones((2, 1, 1))
    with pytest.raises(ValueError, match=r"cannot compose operators of shapes \(3, 2\) @ \(3, 2\)"):
        A @ A
    with pytest.raises(ValueError, match="cannot add operators of shapes"):
        A + A.H
    with pytest.raises(TypeError, match="use A @ B"):
        A * A
    with pytest.raises(TypeError, match="use A @ x"):
        A * np.ones(2)
    with pytest.raises(TypeError, match="can only add an operator"):
        A + 1.0
    with pytest.raises(TypeError, match=r"A @ c with a scalar c is not defined; use c \* A"):
        A @ 2.0
    with pytest.raises(TypeError, match=r"matvec: sparse matrices are not accepted"):
        A.matvec(sp.csr_array(np.ones((2, 1))))
    with pytest.raises(TypeError, match=r"A @ x: sparse matrices are not accepted"):
        A @ sp.eye_array(2)
    with pytest.raises(ValueError, match=r"dot expects an operator, a scalar, or an array of 1 or 2 dimensions"):
        A.dot(np.ones((2, 1, 1)))
    with pytest.raises(TypeError, match="divided by a scalar"):
        A / A
    with pytest.raises(TypeError, match="of type builtins.str"):
        aslinearoperator("not an operator")
    with pytest.raises(TypeError, match="of type builtins.list"):
        aslinearoperator([[1.0, 2.0]])
    with pytest.raises(ValueError, match="2-D"):
        Dense(np.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        Diagonal(np.ones((2, 2)))
    with pytest.raises(ValueError, match="needs a square operator"):
        Dense(np.ones((3, 2)), tags={"symmetric"})
    with pytest.raises(ValueError, match="unknown tags"):
        Dense(np.eye(2), tags={"spd"})
    with pytest.raises(ValueError, match=r"block \(1, 0\) has shape \(2, 2\), but block column 0 has size 3"):
        Block([[np.ones((2, 3))], [np.ones((2, 2))]])
    with pytest.raises(ValueError, match="block row 1 has only None blocks"):
        Block([[np.ones((2, 3))], [None]])
    with pytest.raises(ValueError, match=r"S of shape \(2,\)"):
        LowRank(np.ones((4, 2)), np.ones(3), np.ones((3, 2)))
    with pytest.raises(TypeError, match="must implement _matvec or _matmat"):
        type("Empty", (LinearOperator,), {})((2, 2), np.float64)
    no_adjoint = FunctionOperator((2, 2), lambda x: x)
    with pytest.raises(NotImplementedError, match="without rmatvec"):
        no_adjoint.H @ np.ones(2)
    with pytest.raises(NotImplementedError, match="without rmatvec"):
        dottest(no_adjoint)


# ----------------------------------------------------------------------------- torch
def test_numpy_users_do_not_import_torch():
    code = (
        "import sys, numpy as np, scipy.sparse as sp\n"
        "from optkit.linop import Dense, Sparse, Identity, dottest\n"
        "from optkit.krylov import cg\n"
        "A = Sparse(sp.eye_array(4, format='csr')) + Identity(4)\n"
        "assert dottest(A) and cg(A, np.ones(4)).success\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_torch_parity_via_to(name, cplx):
    torch = pytest.importorskip("torch")
    op, M = make(name, 4, cplx)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        top = op.to("torch")
    assert top.backend == "torch" and top.device == "cpu"
    assert top.dtype == (torch.complex128 if np.dtype(op.dtype).kind == "c" else torch.float64)
    rng = np.random.default_rng(5)
    cplx = np.dtype(op.dtype).kind == "c"  # torch kernels want inputs of the operator's dtype
    x, X, y = vec(rng, M.shape[1], cplx), mat(rng, M.shape[1], 2, cplx), vec(rng, M.shape[0], cplx)
    assert_allclose((top @ torch.as_tensor(x)).numpy(), M @ x, **TOL)
    assert_allclose((top @ torch.as_tensor(X)).numpy(), M @ X, **TOL)
    assert_allclose(top.rmatvec(torch.as_tensor(y)).numpy(), M.conj().T @ y, **TOL)
    assert_allclose(top.T.matvec(torch.as_tensor(y)).numpy(), M.T @ y, **TOL)
    assert_allclose(top.matvec(torch.as_tensor(x)[:, None]).numpy(), (M @ x)[:, None], **TOL)
    assert_allclose(top.rmatvec(torch.as_tensor(y)[:, None]).numpy(), (M.conj().T @ y)[:, None], **TOL)
    assert_allclose(materialize(top).numpy(), M, **TOL)
    assert_allclose(diagonal(top).numpy(), np.diagonal(M), **TOL)
    assert dottest(top)
    back = top.to("numpy")
    assert back.backend == "numpy"
    assert_allclose(materialize(back), M, **TOL)
    assert_allclose(top.to_scipy() @ x, M @ x, **TOL)


def test_operators_built_from_torch_tensors_match_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    M, S, d = mat(rng, 6, 4, False), sparse_mat(rng, 6, 6, False), vec(rng, 6, False)
    U, s, V = mat(rng, 6, 2, False), vec(rng, 2, False), mat(rng, 4, 2, False)
    t = torch.as_tensor
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pairs = [
            (Dense(t(M)), Dense(M)),
            (aslinearoperator(t(S).to_sparse()), Sparse(sp.csr_array(S))),  # torch COO
            (Sparse(t(S).to_sparse_csr()), Sparse(sp.csr_array(S))),  # torch CSR
            (Diagonal(t(d)), Diagonal(d)),
            (LowRank(t(U), t(s), t(V)), LowRank(U, s, V)),
            (Kronecker(t(M[:2, :2]), t(M[:3, :2])), Kronecker(M[:2, :2], M[:3, :2])),
            (Block([[t(M), None], [None, t(S)]]), Block([[M, None], [None, S]])),
            (Identity(5, backend="torch") * 3.0, Identity(5) * 3.0),
        ]
        for top, nop in pairs:
            n, m = nop.shape[1], nop.shape[0]
            x, y = vec(rng, n, False), vec(rng, m, False)
            assert top.backend == "torch" and top.dtype == torch.float64
            assert_allclose((top @ t(x)).numpy(), nop @ x, **TOL)
            assert_allclose(top.rmatvec(t(y)).numpy(), nop.rmatvec(y), **TOL)
            assert_allclose(diagonal(top).numpy(), diagonal(nop), **TOL)
            assert_allclose(materialize(top).numpy(), materialize(nop), **TOL)
            assert dottest(top)
    with pytest.raises(TypeError, match="mix backends"):
        Dense(t(M)) + Dense(M)
    with pytest.raises(TypeError, match="a torch operator takes torch tensors on cpu, got ndarray"):
        Dense(t(M)) @ np.ones(4)
    with pytest.raises(TypeError, match=r"a numpy operator takes numpy arrays, got a torch.Tensor"):
        Dense(M).rmatvec(t(np.ones(6)))


def test_to_changes_dtype_and_round_trips():
    torch = pytest.importorskip("torch")
    op, M = make("nested", 0, False)
    t32 = op.to("torch", dtype="float32")
    assert t32.dtype == torch.float32
    x = np.ones(4)
    assert_allclose((t32 @ torch.ones(4, dtype=torch.float32)).numpy(), M @ x, rtol=1e-5)
    back = t32.to("numpy", dtype=np.float64)
    assert back.dtype == np.float64
    assert_allclose(back @ x, M @ x, rtol=1e-5)
    with pytest.raises(ValueError, match="not available with backend='numpy'"):
        op.to("numpy", device="cuda")
    # scipy hands float64 vectors to a float32 torch operator: they are cast on the way in
    assert_allclose(t32.to_scipy().matvec(np.ones(4)), M @ x, rtol=1e-5)


def test_dottest_on_an_integer_operator_uses_float_vectors():
    M = np.arange(12).reshape(4, 3)
    assert dottest(Dense(M))
    bad = FunctionOperator((4, 3), lambda x: M @ x, lambda y: M.T @ y + 1.0)
    with pytest.raises(AssertionError, match="dot test failed"):
        dottest(bad)

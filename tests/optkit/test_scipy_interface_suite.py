"""scipy's own LinearOperator tests, run against optkit's operators.

scipy's wheel installs ``scipy/sparse/linalg/tests/test_interface.py``; this module imports it
(and skips when it is absent) and runs its cases on optkit operators in two ways.

* **Unchanged**, with ``interface.aslinearoperator`` replaced by optkit's inside a fixture
  (``TestAsLinearOperator.test_basic`` and ``test_dot``, ``test_adjoint_conjugate``,
  ``test_ndim``, ``test_transpose_noconjugate``, ``test_dtypes_of_operator_sum``), or with
  ``interface.LinearOperator`` replaced by optkit's ``FunctionOperator`` where a case uses it
  only to build an operator from callables (``test_repr``, ``test_pickle``). The adapter gives
  each operator scipy's ``args`` attribute (scipy's record of constructor arguments, which
  ``test_basic`` checks with ``hasattr``; not part of optkit's contract).
* **On the same data**, where a case also checks scipy internals or a contract optkit
  changes on purpose: optkit operators built from the matrices of the scipy test class (or
  the same callables) are checked for every part that carries over. What differs on purpose:

  - ``TestLinearOperator.test_matvec``: ``.args``, ``isinstance`` against scipy's private
    classes and the ``((A * 3) / 3).args[0] is A`` simplification are scipy internals;
    ``A ** 2`` has no optkit counterpart (optkit has no power operator: ``A @ A``);
    ``A / array`` is a ``TypeError`` (an operand of the wrong type), not a ``ValueError``.
  - ``test_matmul``: ``A * x`` is matmul in scipy and a ``TypeError`` in optkit (``*`` is
    scaling only); ``A @ 2`` and ``2 @ A`` are a ``TypeError``, not a ``ValueError``.
  - ``test_attributes``: ``A * B`` as a product and ``A ** 4`` (as above).
  - ``test_identity``: ``IdentityOperator(shape)`` is optkit's ``Identity(n)``.
  - ``test_inheritance``, ``test_transpose_multiplication``: optkit's constructor is
    ``LinearOperator(shape, dtype)``, scipy's ``(dtype, shape)``; a subclass implementing
    neither ``_matvec`` nor ``_matmat`` is a ``TypeError`` without scipy's ``RuntimeWarning``.
  - ``test_no_double_init``, ``test_determine_lo_dtype_from_matvec``,
    ``test_determine_lo_dtype_for_int``: optkit does not call ``matvec`` to infer a missing
    dtype (it would run user code, maybe a counted evaluation, at construction): a
    ``FunctionOperator`` without ``dtype`` is real and refuses complex results, naming
    their dtype; with ``dtype`` given, every dtype of scipy's list is kept.
  - ``test_sparse_matmat_exception``: the same ``TypeError``/``ValueError``, with optkit's
    own message.
  - ``test_MatrixLinearOperator_refcycle``: run with scipy's ``assert_deallocated`` on
    optkit's ``Dense`` (and a composite).

Also here: scipy functions that take an operator (``svds``, ``onenormest``, ``lsqr``,
``gmres``, ``eigsh``) run on optkit operators directly, without ``to_scipy()``.
"""

from __future__ import annotations

import operator

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.testing import assert_allclose, assert_equal

from optkit.linop import Dense, FunctionOperator, Identity, LinearOperator, aslinearoperator, materialize

scipy_suite = pytest.importorskip("scipy.sparse.linalg.tests.test_interface")
interface = scipy_suite.interface

EXACT = {"rtol": 1e-12, "atol": 0}  # small integer data: results are exact; 1e-12 is a wide margin


def _as_optkit(A):
    op = aslinearoperator(A)
    op.args = ()  # scipy's record of constructor arguments (see the module docstring)
    return op


def _from_callables(shape, matvec, rmatvec=None, matmat=None, dtype=None, rmatmat=None):
    """scipy's ``LinearOperator(shape, matvec, ...)`` factory call, answered by optkit."""
    return FunctionOperator(shape, matvec, rmatvec, matmat=matmat, rmatmat=rmatmat, dtype=dtype)


@pytest.fixture
def optkit_aslinearoperator(monkeypatch):
    monkeypatch.setattr(interface, "aslinearoperator", _as_optkit)
    assert isinstance(interface.aslinearoperator(np.eye(2)), LinearOperator)  # scipy's cases now meet optkit


@pytest.fixture
def optkit_factory(monkeypatch):
    monkeypatch.setattr(interface, "LinearOperator", _from_callables)
    assert isinstance(interface.LinearOperator((2, 2), matvec=lambda x: x), FunctionOperator)


# ----------------------------------------------------------------------------- scipy's cases, unchanged
@pytest.mark.usefixtures("optkit_aslinearoperator")
@pytest.mark.parametrize("name", ["test_basic", "test_dot"])
def test_scipy_as_linear_operator_cases(name):
    case = scipy_suite.TestAsLinearOperator()
    case.setup_method()  # builds scipy's .T / .H / .adjoint() cases through optkit's operators
    assert any(isinstance(M, LinearOperator) for M, _ in case.cases)
    getattr(case, name)()


@pytest.mark.usefixtures("optkit_aslinearoperator")
@pytest.mark.parametrize(
    "name", ["test_adjoint_conjugate", "test_ndim", "test_transpose_noconjugate", "test_dtypes_of_operator_sum"]
)
def test_scipy_module_cases_with_optkit_aslinearoperator(name):
    getattr(scipy_suite, name)()


@pytest.mark.usefixtures("optkit_factory")
@pytest.mark.parametrize("name", ["test_repr", "test_pickle"])
def test_scipy_module_cases_with_optkit_function_operators(name):
    getattr(scipy_suite, name)()


# ----------------------------------------------------------------------------- scipy's cases, on the same data
def _scipy_data():
    data = scipy_suite.TestLinearOperator()
    data.setup_method()
    return data.A, data.B, data.C


def _callable_sets(M):
    """The two ways test_matvec builds an operator: matvec/rmatvec only, and all four callables."""
    return [
        {
            "matvec": lambda x: np.dot(M, x).reshape(M.shape[0]),
            "rmatvec": lambda x: np.dot(M.T.conj(), x).reshape(M.shape[1]),
        },
        {
            "matvec": lambda x: np.dot(M, x),
            "rmatvec": lambda x: np.dot(M.T.conj(), x),
            "matmat": lambda x: np.dot(M, x),
            "rmatmat": lambda x: np.dot(M.T.conj(), x),
        },
    ]


def _operators(M):
    return [FunctionOperator(M.shape, dtype=M.dtype, **kw) for kw in _callable_sets(M)]


def test_matvec_case_parts_that_carry_over():
    A_, B_, C_ = _scipy_data()
    X = np.array([[1, 2], [3, 4]])
    for A in _operators(A_):
        x = np.array([1, 2, 3])
        for apply in (A.matvec, A.__matmul__, A.dot):
            assert_allclose(apply(x), A_ @ x, **EXACT)
            assert_allclose(apply(x[:, None]), A_ @ x[:, None], **EXACT)
            out = apply(scipy_suite.matrix(x[:, None]))  # np.matrix in, plain array out
            assert type(out) is np.ndarray and out.shape == (2, 1)
            assert_allclose(out, A_ @ x[:, None], **EXACT)
        for op, dense in [
            (2 * A, 2 * A_),
            (A * 2, 2 * A_),
            (2j * A, 2j * A_),
            (A * 2j, 2j * A_),
            (A + A, 2 * A_),
            (A + 2j * A, (1 + 2j) * A_),
            (-A, -A_),
            (A - A, 0 * A_),
            (A / 2, A_ / 2),
            (A / 2j, A_ / 2j),
        ]:
            assert_allclose(op @ [1, 1, 1], dense @ np.ones(3), **EXACT)
            assert_allclose(op @ [[1], [1], [1]], dense @ np.ones((3, 1)), **EXACT)
            assert_allclose(op.matmat([[1], [1], [1]]), dense @ np.ones((3, 1)), **EXACT)
            for adjoint_matvec in (op.rmatvec, op.H.matvec, op.adjoint().matvec):
                assert_allclose(adjoint_matvec([1, 1]), dense.conj().T @ np.ones(2), **EXACT)
            assert_allclose(op.rmatmat(X), dense.conj().T @ X, **EXACT)
        assert_allclose((2j * A).rmatmat(2j * X), (2j * A_).conj().T @ (2j * X), **EXACT)
        assert (2j * A).dtype == np.complex128
        assert_allclose(A @ np.array([1, 2, 3]), A_ @ np.array([1, 2, 3]), **EXACT)  # A unchanged by scaling
        with pytest.raises(TypeError, match="divided by a scalar"):
            A / np.array([1, 2])
        for bad in ([1, 2], [1, 2, 3, 4], [[1], [2]], [[1], [2], [3], [4]]):
            with pytest.raises(ValueError):
                A.matvec(np.array(bad))
        with pytest.raises(ValueError):
            A @ A
        with pytest.raises(TypeError):
            A**2
    for A in _operators(A_):
        for B in _operators(B_):
            AB = A_ @ B_
            assert_allclose((A @ B).rmatmat(X), AB.T @ X, **EXACT)
            assert_allclose((2j * A @ B).rmatmat(X), (2j * AB).conj().T @ X, **EXACT)
            assert_allclose((A @ B) @ [1, 1], AB @ np.ones(2), **EXACT)
            assert_allclose((A @ B) @ [[1], [1]], AB @ np.ones((2, 1)), **EXACT)
            assert_allclose((A @ B).matmat([[1], [1]]), AB @ np.ones((2, 1)), **EXACT)
            for adjoint in ((A @ B).rmatvec, (A @ B).H.matvec, (A @ B).adjoint().matvec):
                assert_allclose(adjoint([1, 1]), AB.T @ np.ones(2), **EXACT)
            with pytest.raises(ValueError):
                A + B
    for C in _operators(C_):
        C2, CC = C @ C, C_ @ C_  # scipy's C ** 2
        assert_allclose(C.rmatmat(X), C_.T @ X, **EXACT)
        assert_allclose(C2.rmatmat(X), CC.T @ X, **EXACT)
        assert_allclose(C2 @ [1, 1], CC @ np.ones(2), **EXACT)
        for adjoint in (C2.rmatvec, C2.H.matvec, C2.adjoint().matvec):
            assert_allclose(adjoint([1, 1]), CC.T @ np.ones(2), **EXACT)
        assert_allclose(C2.matmat([[1], [1]]), CC @ np.ones((2, 1)), **EXACT)


def test_matmul_case_with_at_only():
    A_, _, _ = _scipy_data()
    A = _operators(A_)[1]
    B = np.array([[1 + 1j, 2, 3], [4, 5, 6], [7, 8, 9]])
    b = B[0]
    AH = A_.conj().T
    assert_allclose(operator.matmul(A, b), A_ @ b, **EXACT)
    assert_allclose(operator.matmul(A, b.reshape(-1, 1)), A_ @ b.reshape(-1, 1), **EXACT)
    assert_allclose(operator.matmul(A, B), A_ @ B, **EXACT)
    for H in (A.H, A.adjoint()):
        assert_allclose(operator.matmul(b, H), b @ AH, **EXACT)
        assert_allclose(operator.matmul(b.reshape(1, -1), H), b.reshape(1, -1) @ AH, **EXACT)
        assert_allclose(operator.matmul(B, H), B @ AH, **EXACT)
    with pytest.raises(TypeError, match="use A @ x"):
        A * b  # scipy's legacy matmul spelling
    with pytest.raises(TypeError, match="scalar"):
        operator.matmul(A, 2)
    with pytest.raises(TypeError, match="scalar"):
        operator.matmul(2, A)


def test_attributes_case_without_star_and_power():
    A = aslinearoperator(np.arange(16).reshape(4, 4))

    def always_four_ones(x):
        x = np.asarray(x)
        assert x.shape == (3,) or x.shape == (3, 1)
        return np.ones(4)

    B = FunctionOperator((4, 3), always_four_ones)
    for op in [A, B, A @ B, A.H, A.adjoint(), A + A, B + B, A @ A @ A @ A]:
        assert hasattr(op, "dtype") and hasattr(op, "shape") and hasattr(op, "_matvec")
    assert_allclose((A @ B) @ np.ones(3), np.arange(16).reshape(4, 4) @ np.ones(4), **EXACT)


def test_identity_case():
    ident = Identity(3)
    assert_allclose(ident @ [1, 2, 3], [1, 2, 3], **EXACT)
    assert_allclose(ident.dot(np.arange(9).reshape(3, 3)).ravel(), np.arange(9), **EXACT)
    with pytest.raises(ValueError):
        ident.matvec([1, 2, 3, 4])


def test_inheritance_case_with_optkit_signature():
    class Empty(LinearOperator):
        pass

    with pytest.raises(TypeError, match="must implement _matvec or _matmat"):
        Empty((3, 3), None)

    class MatvecOnly(LinearOperator):
        def __init__(self, n):
            super().__init__((n, n), None)

        def _matvec(self, x):
            return x

    id3 = MatvecOnly(3)
    assert_allclose(id3.matvec([1, 2, 3]), [1, 2, 3], **EXACT)
    with pytest.raises(NotImplementedError):
        id3.rmatvec([4, 5, 6])

    class MatmatOnly(LinearOperator):
        def __init__(self, A):
            super().__init__(A.shape, A.dtype)
            self.A = A

        def _matmat(self, x):
            return self.A.dot(x)

    M = np.random.default_rng(0).standard_normal((5, 3))
    x = np.random.default_rng(1).standard_normal(3)
    assert MatmatOnly(M).matvec(x).shape == (5,)
    assert_allclose(MatmatOnly(M).matvec(x), M @ x, rtol=1e-12)


def test_transpose_multiplication_case_with_optkit_signature():
    class MyMatrix(LinearOperator):
        def __init__(self, A):
            super().__init__(A.shape, A.dtype)
            self.A = A

        def _matmat(self, other):
            return self.A @ other

        def _rmatmat(self, other):
            return self.A.T @ other

    Y = np.array([[1, 2], [3, 4]])
    A = MyMatrix(Y)
    X = np.array([1, 2])
    B = np.array([[10, 20], [30, 40]])
    X2 = X.reshape(-1, 1)
    for got, want in [
        (A @ B, Y @ B),
        (B.T @ A, B.T @ Y),
        (A.T @ B, Y.T @ B),
        (A @ X, Y @ X),
        (X.T @ A, X.T @ Y),
        (A.T @ X, Y.T @ X),
        (A @ X2, Y @ X2),
        (X2.T @ A, X2.T @ Y),
        (A.T @ X2, Y.T @ X2),
    ]:
        assert_equal(np.shape(got), np.shape(want))
        assert_allclose(got, want, **EXACT)


def test_sparse_matmat_case_with_optkit_messages():
    A = FunctionOperator((2, 2), lambda x: x)
    B = sp.eye_array(2)
    with pytest.raises(TypeError, match="sparse matrices are not accepted"):
        A @ B
    with pytest.raises(TypeError, match="sparse matrices are not accepted"):
        B @ A
    with pytest.raises(ValueError):
        A @ np.identity(4)
    with pytest.raises(ValueError):
        np.identity(4) @ A


@pytest.mark.parametrize("dtype", scipy_suite.ALLDTYPES, ids=lambda d: np.dtype(d).name)
def test_dtype_cases_without_a_probe_call(dtype):
    """scipy infers a missing dtype from one matvec on an int8 vector; optkit never calls
    matvec at construction: a given dtype is kept, a missing one is real and checked."""
    scalar = np.array(1, dtype=dtype)
    calls = []

    def mv(v):
        calls.append(v)
        return np.array([scalar * v[0], v[1]])

    assert_equal(np.dtype(FunctionOperator((2, 2), mv, dtype=dtype).dtype), np.dtype(dtype))
    lo = FunctionOperator((2, 2), mv)
    assert calls == [] and lo.dtype == np.float64
    if np.dtype(dtype).kind == "c":
        result = np.result_type(scalar, np.float64)  # what mv returns for a float64 vector
        with pytest.raises(TypeError, match=f"matvec returned {result.name} values.*pass dtype='{result.name}'"):
            lo @ np.array([1.0, 2.0])
    else:
        assert_allclose(lo @ np.array([1.0, 2.0]), [1.0, 2.0], **EXACT)


def test_refcycle_case_with_scipy_assert_deallocated():
    A = np.eye(2)
    with scipy_suite.assert_deallocated(Dense, A) as op:
        op.adjoint()
        del op
    with scipy_suite.assert_deallocated(lambda M: Dense(M) + 2 * Dense(M).H, A) as op:
        assert_allclose(op.H @ np.ones(2), [3.0, 3.0], **EXACT)
        del op


# ----------------------------------------------------------------------------- scipy functions on optkit operators
def test_scipy_functions_take_optkit_operators_directly():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((8, 6))
    op = Dense(M) + 0 * Dense(M)  # a composite: only matvec/rmatvec/matmat reach scipy
    s = spla.svds(op, k=2, return_singular_vectors=False, random_state=0)
    # svds converges to rounding; 1e-8 is a wide margin
    assert_allclose(np.sort(s), np.sort(np.linalg.svd(M, compute_uv=False))[-2:], rtol=1e-8)
    S = Dense(rng.standard_normal((6, 6)))
    exact = np.abs(materialize(S)).sum(axis=0).max()
    assert_allclose(spla.onenormest(S + 0 * S, t=6), exact, rtol=1e-12)  # t >= n: scipy computes it exactly
    assert 0 < spla.onenormest(S + 0 * S) <= exact * (1 + 1e-12)  # otherwise a lower bound
    b = rng.standard_normal(8)
    x_ls = spla.lsqr(op, b, atol=1e-14, btol=1e-14)[0]
    assert_allclose(x_ls, np.linalg.lstsq(M, b, rcond=None)[0], rtol=1e-8)
    K = Dense(M.T @ M + np.eye(6), tags={"psd"})
    x, info = spla.gmres(K, np.ones(6), rtol=1e-12, atol=0.0)
    assert info == 0
    assert_allclose(x, np.linalg.solve(M.T @ M + np.eye(6), np.ones(6)), rtol=1e-8)
    w = spla.eigsh(K, k=2, return_eigenvectors=False)
    assert_allclose(np.sort(w), np.linalg.eigvalsh(M.T @ M + np.eye(6))[-2:], rtol=1e-8)

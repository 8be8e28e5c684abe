"""The composite problem kind: ``min_x F(x) = L(A x) + g(x)``, smooth datafit plus separable penalty.

What proximal-gradient and coordinate methods need: the data matrix ``A`` (m, n) with its
entries (column access, column norms), the smooth part as a function of the predictions
``z = A x`` (so a coordinate method keeps ``z`` up to date at the cost of one column), and a
penalty with a proximal map. The terms are in :mod:`optkit._composite_terms` and exported
here: datafits :class:`QuadraticDatafit` (Lasso) and :class:`LogisticDatafit` (L1-logistic),
penalties :class:`L1`, :class:`L1NonNegative`, :class:`GroupL1` and :class:`Box`.

Duality gap
    For a gauge penalty ``g = lam h`` (L1, L1NonNegative, GroupL1) and a datafit with a
    Fenchel conjugate ``L*``, the dual of ``min_x L(A x) + g(x)`` is
    ``max_u D(u) = -L*(u)`` subject to ``dual_norm(-A^T u) <= lam``. At ``x`` the dual point
    is the datafit's gradient at the predictions rescaled into the feasible set, as celer,
    skglm and scikit-learn do::

        u = grad L(A x),   s = min(1, lam / dual_norm(-A^T u)),
        gap(x) = L(A x) + g(x) + L*(s u)  >= 0.

    For the Lasso, ``u = -r / m`` with the residual ``r = b - A x``, and this is
    scikit-learn's ``Lasso.dual_gap_`` (its duality gap divided by ``m``):
    ``gap = ||r||^2 / (2m) + lam ||x||_1 - s r^T b / m + s^2 ||r||^2 / (2m)`` with
    ``s = min(1, m lam / ||A^T r||_inf)``. The gap bounds ``F(x) - F*`` from above and is 0
    at a solution, up to rounding: it is a difference of two numbers of the size of ``F``,
    so it can be negative by a few ``eps * |F|``; it is reported as computed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np
import scipy.sparse as sp

from ._composite_terms import (
    L1,
    Box,
    Datafit,
    GroupL1,
    L1NonNegative,
    LogisticDatafit,
    Penalty,
    QuadraticDatafit,
)
from .backend import backend_name, convert, device_of, get_namespace, is_torch, to_numpy, torch_or_none
from .linop import LinearOperator, aslinearoperator
from .problem import Problem

__all__ = [
    "L1",
    "Box",
    "CompositeProblem",
    "Datafit",
    "GroupL1",
    "L1NonNegative",
    "LogisticDatafit",
    "Penalty",
    "QuadraticDatafit",
]

#: ``lipschitz()`` is exact (an eigenvalue of the smaller Gram matrix) when min(m, n) is at
#: most this; above it, power iteration, whose ~100 products cost less than forming the Gram.
EXACT_LIPSCHITZ_MAX_DIM = 500
_POWER_MAX_ITER = 500
_POWER_RTOL = 1e-10


def _as_matrix(A: Any) -> Any:
    """``A`` checked: a 2-D finite floating numpy array, scipy CSC array or dense torch tensor."""
    if isinstance(A, LinearOperator):
        raise TypeError(
            "A must be a matrix with entries (numpy array, scipy sparse matrix or torch tensor), not a "
            "LinearOperator: coordinate methods read its columns"
        )
    if sp.issparse(A):
        A = sp.csc_array(A)
        if A.dtype.kind != "f":
            A = A.astype(np.float64)
        values = A.data
    elif is_torch(A):
        if A.layout != torch_or_none().strided:
            raise TypeError("A as a torch tensor must be dense (strided); pass a sparse matrix as scipy.sparse")
        if not A.dtype.is_floating_point:
            A = A.double()
        values = A
    elif isinstance(A, np.ndarray):
        if A.dtype.kind != "f":
            A = A.astype(np.float64)
        values = A
    else:
        raise TypeError(
            "A must be a numpy array, a scipy sparse matrix or a torch tensor, "
            f"got {type(A).__module__}.{type(A).__name__}"
        )
    if len(A.shape) != 2 or min(A.shape) < 1:
        raise ValueError(f"A must be 2-D (m, n) with m, n >= 1, got shape {tuple(A.shape)}")
    xp = get_namespace(values)
    if not bool(xp.all(xp.isfinite(values))):
        raise ValueError("A contains NaN or inf; expected finite values")
    return A


def _convert_matrix(M: Any, backend: str, device: str | None, dtype: Any) -> Any:
    if sp.issparse(M):
        if backend == "numpy":
            return M if dtype is None else M.astype(convert(M.data[:0], "numpy", None, dtype).dtype)
        return convert(M.toarray(), backend, device, dtype)
    return convert(M, backend, device, dtype)


class CompositeProblem(Problem):
    """``min_x F(x) = f(x) + g(x)``, ``f(x) = L(A x)`` smooth, ``g`` separable with a prox.

    Parameters
    ----------
    A : ndarray, scipy sparse matrix or dense torch tensor, shape (m, n)
        The data matrix; non-floating entries become float64. Kept as ``matrix`` (a scipy
        sparse matrix as ``scipy.sparse.csc_array``, columns contiguous, what coordinate
        methods read) and as the :class:`~optkit.linop.LinearOperator` ``A``. On torch the
        matrix is dense: :meth:`to` densifies a scipy sparse ``A`` (torch's sparse layouts have
        no column slicing, and the LIBSVM sets have at most a few hundred features); torch
        sparse tensors are refused.
    datafit : Datafit
        ``L``, of ``m`` predictions (:class:`QuadraticDatafit`, :class:`LogisticDatafit`).
    penalty : Penalty
        ``g`` (:class:`L1`, :class:`L1NonNegative`, :class:`GroupL1`, :class:`Box`).
    x0 : array of shape (n,), optional
        Starting point on ``A``'s backend and device; zeros by default.
    name : str
    metadata : mapping, optional
        ``metadata["f_opt"]``, when known, is the optimal value of ``F``.

    Notes
    -----
    The datafit and the penalty are moved to ``A``'s backend, device and dtype.
    Capabilities: ``fun``, ``grad`` (of ``f``), ``prox``, ``linop``, ``coordinate_lipschitz``,
    ``matrix``, and ``duality_gap`` when the datafit has a conjugate and the penalty a dual
    norm. Counters: ``fun`` (:meth:`fun`, :meth:`smooth_fun`), ``grad`` (:meth:`smooth_grad`),
    ``prox`` (:meth:`prox`), ``matvec`` (:meth:`predictions`). Not a
    :class:`~optkit.problem.SmoothProblem`: ``F`` is not differentiable, so smooth solvers
    do not accept it.
    """

    kind: ClassVar[str] = "composite"

    def __init__(
        self,
        A: Any,
        datafit: Datafit,
        penalty: Penalty,
        x0: Any = None,
        *,
        name: str = "composite",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        matrix = _as_matrix(A)
        m, n = matrix.shape
        if not isinstance(datafit, Datafit):
            raise TypeError(f"datafit must be an optkit Datafit (QuadraticDatafit, LogisticDatafit), got {datafit!r}")
        if not isinstance(penalty, Penalty):
            raise TypeError(f"penalty must be an optkit Penalty (L1, L1NonNegative, GroupL1, Box), got {penalty!r}")
        if datafit.size != m:
            raise ValueError(f"datafit has {datafit.size} predictions, but A has m = {m} rows")
        penalty.check_size(n)
        backend, device = backend_name(matrix), device_of(matrix)
        if x0 is None:
            x0 = convert(np.zeros(n), backend, device, matrix.dtype)
        elif backend_name(x0) != backend or device_of(x0) != device:
            raise TypeError(f"x0 must be on A's backend and device ({backend}, {device}), got {backend_name(x0)}")
        if getattr(x0, "ndim", None) != 1 or x0.shape[0] != n:
            raise ValueError(f"x0 must have shape ({n},) to match A {matrix.shape}, got {getattr(x0, 'shape', None)}")
        if not np.all(np.isfinite(to_numpy(x0))):
            raise ValueError("x0 contains NaN or inf; expected finite values")
        super().__init__(name, x0, metadata)
        self.matrix = matrix
        self.A = aslinearoperator(matrix)
        self.datafit = datafit.to(backend, device, matrix.dtype)
        self.penalty = penalty.to(backend, device, matrix.dtype)
        self._column_norms_sq = None
        self._norm_sq = None

    @property
    def m(self) -> int:
        """Number of predictions (rows of ``A``)."""
        return int(self.matrix.shape[0])

    @property
    def capabilities(self) -> frozenset[str]:
        caps = {"fun", "grad", "prox", "linop", "coordinate_lipschitz", "matrix"}
        if self.has_duality_gap:
            caps.add("duality_gap")
        return frozenset(caps)

    @property
    def has_duality_gap(self) -> bool:
        """Whether :meth:`duality_gap` is available (conjugate datafit and gauge penalty)."""
        return (
            type(self.datafit).conjugate is not Datafit.conjugate
            and type(self.penalty).dual_norm is not Penalty.dual_norm
        )

    # ------------------------------------------------------------------ evaluations

    def predictions(self, x: Any) -> Any:
        """``z = A x``, shape (m,) (counted under ``"matvec"``)."""
        self.counters["matvec"] += 1
        return self.A @ x

    def fun(self, x: Any) -> float:
        """``F(x) = L(A x) + g(x)`` (``inf`` outside the penalty's domain; counted under ``"fun"``)."""
        self.counters["fun"] += 1
        return float(self.datafit.value(self.A @ x) + self.penalty.value(x))

    def smooth_fun(self, x: Any) -> float:
        """``f(x) = L(A x)`` (counted under ``"fun"``)."""
        self.counters["fun"] += 1
        return float(self.datafit.value(self.A @ x))

    def smooth_grad(self, x: Any) -> Any:
        """``grad f(x) = A^T L'(A x)``, shape (n,) (counted under ``"grad"``)."""
        self.counters["grad"] += 1
        return self.A.rmatvec(self.datafit.grad(self.A @ x))

    def prox(self, x: Any, step: Any) -> Any:
        """The proximal map of ``step * g`` at ``x`` (counted under ``"prox"``); see :meth:`Penalty.prox`."""
        self.counters["prox"] += 1
        return self.penalty.prox(x, step)

    # ------------------------------------------------------------------ constants

    def column_norms_sq(self) -> Any:
        """``||a_j||^2`` for every column ``a_j`` of ``A``, shape (n,) (computed once)."""
        if self._column_norms_sq is None:
            M = self.matrix
            if sp.issparse(M):
                self._column_norms_sq = np.asarray(M.multiply(M).sum(axis=0)).ravel()
            else:
                self._column_norms_sq = get_namespace(M).sum(M * M, axis=0)
        return self._column_norms_sq * 1  # a copy: callers may scale it in place

    def coordinate_lipschitz(self) -> Any:
        """``curvature * ||a_j||^2``: the Lipschitz constant of ``grad_j f`` along ``x_j``, shape (n,)."""
        return self.datafit.curvature() * self.column_norms_sq()

    def lipschitz(self) -> float:
        """A Lipschitz constant of ``grad f``: ``curvature * ||A||_2^2``.

        ``||A||_2^2`` is exact (to rounding: the top eigenvalue of the smaller Gram matrix,
        ``A^T A`` or ``A A^T``) when ``min(m, n) <= EXACT_LIPSCHITZ_MAX_DIM``; above that it is
        the Rayleigh quotient of power iteration on ``A^T A`` (seeded start, stopped at a
        relative change of 1e-10 or 500 iterations), an estimate from below that is accurate
        when the top two singular values are apart. Computed once.
        """
        if self._norm_sq is None:
            self._norm_sq = self._spectral_norm_sq()
        return self.datafit.curvature() * self._norm_sq

    def _spectral_norm_sq(self) -> float:
        M = self.matrix
        m, n = M.shape
        if min(m, n) <= EXACT_LIPSCHITZ_MAX_DIM:
            gram = M.T @ M if n <= m else M @ M.T
            if sp.issparse(gram):
                gram = gram.toarray()
            return float(get_namespace(gram).linalg.eigvalsh(gram)[-1])
        xp = get_namespace(self.x0)
        v = convert(np.random.default_rng(0).standard_normal(n), self.backend, self.device, M.dtype)
        v = v / xp.linalg.vector_norm(v)
        estimate = 0.0
        for _ in range(_POWER_MAX_ITER):
            w = self.A.rmatvec(self.A @ v)
            previous, estimate = estimate, float(v @ w)
            size = float(xp.linalg.vector_norm(w))
            if size == 0.0 or abs(estimate - previous) <= _POWER_RTOL * estimate:
                break
            v = w / size
        return estimate

    def _gauge_penalty(self, what: str) -> None:
        if type(self.penalty).dual_norm is Penalty.dual_norm:
            raise ValueError(
                f"{what} needs a gauge penalty (L1, L1NonNegative, GroupL1); problem {self.name!r} has {self.penalty!r}"
            )

    def lambda_max(self) -> float:
        """The smallest ``lam`` for which ``x = 0`` is a solution: ``dual_norm(-A^T L'(0))``.

        For :class:`L1` this is ``||A^T L'(0)||_inf``. Independent of the penalty's own
        ``lam``. Raises ``ValueError`` for a penalty that is not a gauge (:class:`Box`).
        """
        self._gauge_penalty("lambda_max")
        xp = get_namespace(self.x0)
        zero = xp.zeros(self.m, dtype=self.matrix.dtype, device=self.device)
        return self.penalty.dual_norm(-self.A.rmatvec(self.datafit.grad(zero)))

    # ------------------------------------------------------------------ measures

    def duality_gap(self, x: Any) -> float:
        """The duality gap at ``x`` (see the module docstring for the formula), ``>= 0`` up to rounding.

        Raises ``ValueError`` when the datafit has no conjugate or the penalty is not a gauge.
        """
        if type(self.datafit).conjugate is Datafit.conjugate:
            raise ValueError(
                f"duality_gap needs a datafit with a Fenchel conjugate; problem {self.name!r} has {self.datafit!r}"
            )
        self._gauge_penalty("duality_gap")
        z = self.A @ x
        u = self.datafit.grad(z)
        primal = self.datafit.value(z) + self.penalty.value(x)
        return self.duality_gap_from(primal, u, self.A.rmatvec(u))

    def duality_gap_from(self, primal: Any, u: Any, grad: Any) -> float:
        """The duality gap of :meth:`duality_gap` from quantities a solver already holds:
        ``primal = F(x)``, ``u = L'(A x)`` (shape (m,)) and ``grad = A^T u`` (shape (n,)); no
        product with ``A``. Coordinate methods that keep ``A x`` and the gradient up to date
        measure their gap with it at ``O(m + n)``."""
        lam = self.penalty.lam
        size = self.penalty.dual_norm(-grad)
        scale = 1.0 if size <= lam else lam / size
        return float(primal + self.datafit.conjugate(scale * u))

    def evaluate(self, x: Any, extras: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Quality of ``x``, computed the same way for every solver (not counted).

        Returns
        -------
        dict
            ``fun`` (``F(x)``); ``optimality`` (the largest ``subdiff_distance``: 0 at a
            solution); ``duality_gap`` when available; ``f_gap`` (``F(x) - f_opt``) when
            ``metadata["f_opt"]`` is known; ``nnz`` (entries of ``x`` that are not exactly 0).
        """
        xp = get_namespace(x)
        z = self.A @ x
        u = self.datafit.grad(z)
        grad = self.A.rmatvec(u)
        primal = self.datafit.value(z) + self.penalty.value(x)
        out = {
            "fun": float(primal),
            "optimality": float(xp.max(self.penalty.subdiff_distance(x, grad))),
            "nnz": int(xp.sum(x != 0)),
        }
        if self.has_duality_gap:
            out["duality_gap"] = self.duality_gap_from(primal, u, grad)
        if self.metadata.get("f_opt") is not None:
            out["f_gap"] = out["fun"] - float(self.metadata["f_opt"])
        return out

    # ------------------------------------------------------------------ backends

    def to(self, backend: str = "numpy", device: str | None = None, dtype: Any = None) -> "CompositeProblem":
        """This problem on another backend, device or dtype (see the class notes on sparse ``A``)."""
        matrix = _convert_matrix(self.matrix, backend, device, dtype)
        x0 = convert(self.x0, backend, device, matrix.dtype)
        return CompositeProblem(matrix, self.datafit, self.penalty, x0, name=self.name, metadata=self.metadata)

    def __repr__(self) -> str:
        return (
            f"CompositeProblem(name={self.name!r}, m={self.m}, n={self.n}, datafit={self.datafit!r}, "
            f"penalty={self.penalty!r}, backend={self.backend!r})"
        )

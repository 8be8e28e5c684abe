"""Regularised saddle-point (KKT) systems by MINRES with an augmented-Lagrangian preconditioner.

Solves ``K z = b``, ``K = [[B, J^T], [J, -delta_c I]]`` (``B`` (n, n) symmetric and positive
definite on ``null(J)``, ``J`` (m, n), ``delta_c >= 0``), to the **true** relative residual
``||K z - b||_2 <= rtol ||b||_2``, by :func:`optkit.krylov.minres` preconditioned with the
block-diagonal augmented-Lagrangian preconditioner (Greif & Schoetzau 2006; Rees & Greif 2007)::

    P = diag(B_rho, w I),   w = 1/rho + delta_c,   B_rho = B + J^T J / w   (= B + rho J^T J at delta_c = 0).

With ``B_rho`` exact, ``P^{-1} K`` has the eigenvalue +1 (n times) and m eigenvalues
``-rho nu / (1 + rho nu)`` (``delta_c = 0``, ``nu`` those of ``J B^{-1} J^T``): once
``rho nu_min >> 1``, a handful of iterations whatever the conditioning of ``K``. ``1/w``, not
``rho``: at ``delta_c > 0``, ``rho -> oo`` the eigenvalues lie in ``[-1, -0.618] u [0.618, 1]``.

Scale rule (Golub & Greif's ``||B|| / ||J||^2`` needs hundreds of iterations when ``J`` is
ill-conditioned, as on ``pde-control``: ``examples/kkt_preconditioners.py``)::

    rho = RHO_TARGET / (sigma_min(J)^2 / ||B|| + delta_c),   at most RHO_CAP ||B|| / ||J||^2,

so that ``rho nu_min >= RHO_TARGET`` for positive definite ``B``: norms by seeded power
iterations, ``sigma_min(J)^2`` from ``J J^T`` (LAPACK, or shift-invert Lanczos when sparse);
the cap keeps ``B`` visible in the rounded ``B_rho``. When ``B_rho`` is not positive definite,
``rho`` grows tenfold (``RHO_ESCALATIONS`` times); never positive definite means ``B`` is not
positive definite on ``null(J)``: ``Status.BREAKDOWN``. A large ``rho`` makes MINRES's
``P^{-1}``-norm residual differ from the 2-norm by orders of magnitude, so MINRES runs in
refinement passes (``K dz = b - K z``, to ``PASS_RTOL`` in its own norm), and its callback stops
it on the true residual (one more product with ``K`` per iteration); a pass that does not halve
the true residual ends the solve (``Status.STALLED``: ``rtol`` below the attainable accuracy).

``preconditioner=`` applies ``B_rho^{-1}`` by

* ``"factor"``: dense Cholesky, or sparse SuperLU in symmetric mode whose pivots prove ``B_rho``
  positive definite (scikit-sparse/CHOLMOD is not installed);
* ``"nystrom"``: the randomized Nystrom preconditioner (Frangella, Tropp & Udell 2023) from
  products ``B_rho @ Omega`` (``B_rho`` is never formed); the rank doubles when a rank does not
  converge within ``ITERS_PER_RANK`` iterations, up to ``n`` (exact);
* ``"auto"``: ``"factor"`` when ``B`` or ``J`` is sparse or ``n <= AUTO_FACTOR_MAX_N``, else ``"nystrom"``.

numpy (dense arrays, scipy sparse matrices), float64.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ._saddle_point_support import PASS_DECREASE, PASS_RTOL, Factor, Monitor, NotPositiveDefinite, Nystrom
from .krylov import minres
from .linop import LinearOperator
from .result import Status
from .validation import check_choice, check_int, check_nonnegative, check_positive

__all__ = [
    "AugmentedLagrangianPreconditioner",
    "SaddlePointResult",
    "SaddlePointSolver",
    "choose_rho",
    "solve_saddle_point",
]

PRECONDITIONERS = ("auto", "factor", "nystrom")
#: ``rho lambda_min(J B^{-1} J^T + delta_c I)`` the scale rule aims at (negative eigenvalues within 1/11 of -1).
RHO_TARGET = 10.0
#: Largest ``rho ||J||^2 / ||B||``: beyond it ``B`` drowns in the rounding of ``B + rho J^T J``.
RHO_CAP = 1e8
#: Tenfold increases of ``rho`` tried when ``B_rho`` is not positive definite.
RHO_ESCALATIONS = 4
#: MINRES iterations a Nystrom rank gets before the rank doubles.
ITERS_PER_RANK = 30
#: Columns beyond ``m`` of the first Nystrom sketch (``rho J^T J`` adds m large eigenvalues to ``B_rho``).
EXTRA_RANK = 20
#: Largest dense ``n`` that ``"auto"`` factors.
AUTO_FACTOR_MAX_N = 4000
_POWER_STEPS = 10


@dataclass(frozen=True)
class SaddlePointResult:
    """What :func:`solve_saddle_point` and :meth:`SaddlePointSolver.solve` return.

    Attributes
    ----------
    z : ndarray of shape (n + m,)
        The solution ``[x; y]``: the iterate with the smallest true residual; NaN when no
        preconditioner could be built (``B`` not positive definite on ``null(J)``, ``K`` singular).
    status : Status
        ``CONVERGED`` (true residual ``<= rtol``), ``MAX_ITER``, ``TIME_LIMIT``, ``STALLED``
        (the true residual stopped improving above ``rtol``), ``BREAKDOWN`` or ``NONFINITE``.
    message : str
    nit : int
        MINRES iterations of this solve, all refinement passes.
    residual : float
        ``||K z - b||_2 / ||b||_2``, computed from ``z``.
    rho : float
        The augmented-Lagrangian parameter used.
    rank : int or None
        The Nystrom rank at the end of the solve; None for ``"factor"``.
    preconditioner : str
        ``"factor"`` or ``"nystrom"``.
    """

    z: np.ndarray
    status: Status
    message: str
    nit: int
    residual: float
    rho: float
    rank: int | None
    preconditioner: str

    @property
    def success(self) -> bool:
        """Whether the true residual met ``rtol``."""
        return self.status is Status.CONVERGED


# ----------------------------------------------------------------------------- input and scale
def _as_matrix(name: str, A):
    """``A`` as a float64 dense array or CSR matrix, 2-D and non-empty; raise otherwise."""
    if sp.issparse(A):
        A = sp.csr_array(A, dtype=np.float64)
    elif isinstance(A, (np.ndarray, list, tuple)):
        A = np.asarray(A, dtype=np.float64)
    else:
        raise TypeError(f"{name} must be a numpy array or a scipy sparse matrix, got {type(A).__name__}")
    if A.ndim != 2 or 0 in A.shape:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {A.shape}")
    return A


def _check_shapes(B, J) -> tuple[object, object]:
    B, J = _as_matrix("B", B), _as_matrix("J", J)
    n = B.shape[0]
    if B.shape != (n, n):
        raise ValueError(f"B must be square (n, n), got shape {B.shape}")
    if J.shape[1] != n:
        raise ValueError(f"J must have shape (m, {n}) to match B of shape {B.shape}, got {J.shape}")
    return B, J


def _check_system(B, J, delta_c) -> tuple[object, object, float]:
    """``B``, ``J`` as float64 (dense arrays or CSR) and ``delta_c``, checked; raise on bad input."""
    B, J = _check_shapes(B, J)
    for name, A in (("B", B), ("J", J)):
        if not np.all(np.isfinite(A.data if sp.issparse(A) else A)):
            raise ValueError(f"{name} contains NaN or inf")
    asym = abs(B - B.T).max()
    if asym > 1e-10 * max(abs(B).max(), np.finfo(float).tiny):
        raise ValueError(f"B must be symmetric; max |B - B^T| = {asym:.3e}")
    return B, J, check_nonnegative("delta_c", delta_c)


def _norm_estimate(apply, n: int, rng: np.random.Generator) -> float:
    """``||A||_2`` of a symmetric ``A`` (``apply(v) = A v``) by power iteration (a lower bound, enough for a scale)."""
    v = rng.standard_normal(n)
    estimate = 0.0
    for _ in range(_POWER_STEPS):
        v /= np.linalg.norm(v)
        v = apply(v)
        estimate = float(np.linalg.norm(v))
        if estimate == 0.0:
            return 0.0
    return estimate


def _smallest_gram_eigenvalue(J) -> float:
    """``sigma_min(J)^2 = lambda_min(J J^T)`` (0 when ``J`` has fewer columns than rows or is rank deficient)."""
    m, n = J.shape
    if m > n:
        return 0.0
    if not sp.issparse(J):
        return max(float(sla.eigvalsh(J @ J.T, subset_by_index=(0, 0))[0]), 0.0)
    gram = sp.csc_array(J @ J.T)
    if m <= 2:
        return max(float(np.linalg.eigvalsh(gram.toarray())[0]), 0.0)
    try:
        value = spla.eigsh(gram, k=1, sigma=0.0, which="LM", return_eigenvectors=False, tol=1e-3)[0]
    except RuntimeError:  # SuperLU: J J^T exactly singular
        return 0.0
    return max(float(value), 0.0)


def choose_rho(B, J, delta_c: float = 0.0, *, rng=None) -> float:
    """The augmented-Lagrangian parameter of the scale rule (see the module docstring).

    Parameters
    ----------
    B : ndarray or scipy sparse matrix of shape (n, n)
    J : ndarray or scipy sparse matrix of shape (m, n)
    delta_c : float
        The regularisation of ``K``'s second diagonal block (``>= 0``).
    rng : numpy Generator or seed, optional
        Start vectors of the power iterations.

    Returns
    -------
    float
        ``RHO_TARGET / (sigma_min(J)^2 / ||B|| + delta_c)`` capped at ``RHO_CAP ||B|| / ||J||^2``;
        ``inf`` when ``J`` is rank deficient and ``delta_c = 0`` (``K`` is singular).
    """
    B, J, delta_c = _check_system(B, J, delta_c)
    return _scale_rule(B, J, delta_c, np.random.default_rng(rng))


def _scale_rule(B, J, delta_c: float, rng: np.random.Generator) -> float:
    norm_J2 = _norm_estimate(lambda v: J.T @ (J @ v), B.shape[0], rng)
    norm_B = _norm_estimate(lambda v: B @ v, B.shape[0], rng)
    # B = 0 is allowed (K nonsingular when J is square and invertible): scale by J alone
    norm_B = max(norm_B, 1e-12 * norm_J2)
    if norm_J2 == 0.0:
        return math.inf if delta_c == 0 else RHO_TARGET / delta_c
    floor = _smallest_gram_eigenvalue(J) / norm_B + delta_c
    if floor <= 1e-14 * norm_J2 / norm_B:
        return math.inf
    return min(RHO_TARGET / floor, RHO_CAP * norm_B / norm_J2)


# ----------------------------------------------------------------------------- the preconditioner
class AugmentedLagrangianPreconditioner(LinearOperator):
    """``P^{-1} = diag(B_rho^{-1}, I / w)`` as a symmetric positive definite operator for ``minres``'s ``M``.

    Parameters
    ----------
    B : ndarray or scipy sparse matrix of shape (n, n)
        Symmetric.
    J : ndarray or scipy sparse matrix of shape (m, n)
    rho : float
        Augmented-Lagrangian parameter (``> 0``; :func:`choose_rho` gives the scale rule's).
    delta_c : float
        ``K``'s regularisation; ``w = 1/rho + delta_c``, ``B_rho = B + J^T J / w``.
    method : {"factor", "nystrom"}
        How ``B_rho^{-1}`` is applied (module docstring).
    rank : int, optional
        First Nystrom rank (default ``min(n, m + EXTRA_RANK)``); ignored by ``"factor"``.
    rng : numpy Generator or seed, optional
        The Nystrom test matrices.

    Raises
    ------
    numpy.linalg.LinAlgError
        When ``B_rho`` is not positive definite (``"factor"``) or the sketch shows it (``"nystrom"``).
    """

    def __init__(self, B, J, rho: float, *, delta_c: float = 0.0, method: str = "factor", rank=None, rng=None):
        B, J, delta_c = _check_system(B, J, delta_c)
        check_positive("rho", rho)
        check_choice("method", method, ("factor", "nystrom"))
        if rank is not None:
            check_int("rank", rank, 1)
        self._build(B, J, float(rho), delta_c, method, rank, rng)

    @classmethod
    def _from_checked(cls, B, J, rho, delta_c, method, rank, rng) -> AugmentedLagrangianPreconditioner:
        """Build from arguments :class:`SaddlePointSolver` has already checked (the checks read all of ``B``)."""
        self = cls.__new__(cls)
        self._build(B, J, rho, delta_c, method, rank, rng)
        return self

    def _build(self, B, J, rho, delta_c, method, rank, rng) -> None:
        n, m = B.shape[0], J.shape[0]
        rank = min(n, m + EXTRA_RANK if rank is None else rank)
        super().__init__((n + m, n + m), np.float64, tags={"symmetric", "psd"})
        self.rho, self.delta_c, self.method, self.n = float(rho), delta_c, method, n
        self.weight = 1.0 / self.rho + delta_c
        try:
            if method == "factor":
                self._inverse = Factor(B, J, self.weight)
            else:
                self._inverse = Nystrom(B, J, self.weight, rank, np.random.default_rng(rng))
        except NotPositiveDefinite as err:
            raise np.linalg.LinAlgError(f"rho = {rho:.3e}: {err}") from None

    @property
    def rank(self) -> int | None:
        """The Nystrom rank; None for ``"factor"``."""
        return self._inverse.rank

    def grow(self) -> bool:
        """Double the Nystrom rank (up to n); False when nothing can grow (``"factor"``, or rank n).

        Raises ``numpy.linalg.LinAlgError`` when the larger sketch shows ``B_rho`` is not positive definite.
        """
        try:
            return self._inverse.grow()
        except NotPositiveDefinite as err:
            raise np.linalg.LinAlgError(f"rho = {self.rho:.3e}: {err}") from None

    def _matvec(self, v):
        return np.concatenate([self._inverse.solve(v[: self.n]), v[self.n :] / self.weight])

    def _matmat(self, V):
        return np.vstack([self._inverse.solve(V[: self.n]), V[self.n :] / self.weight])

    def _adjoint(self):
        return self


# ----------------------------------------------------------------------------- the solver
class SaddlePointSolver:
    """``K = [[B, J^T], [J, -delta_c I]]`` with its preconditioner, built once for many solves.

    ``rho`` from the scale rule (unless given), ten times larger while ``B_rho`` is not positive
    definite (``RHO_ESCALATIONS`` times); a failure is reported by every :meth:`solve` (``BREAKDOWN``).

    Parameters
    ----------
    B : ndarray or scipy sparse matrix of shape (n, n)
        Symmetric, positive definite on ``null(J)``.
    J : ndarray or scipy sparse matrix of shape (m, n)
    delta_c : float
        ``>= 0``.
    preconditioner : {"auto", "factor", "nystrom"}
    rho : float, optional
        Overrides the scale rule (``> 0``).
    rank : int, optional
        First Nystrom rank (default ``min(n, m + EXTRA_RANK)``).
    rng : numpy Generator or seed, optional
        Power iterations and Nystrom sketches.

    Attributes
    ----------
    rho : float
    method : str
        ``"factor"`` or ``"nystrom"`` (what ``"auto"`` chose).
    preconditioner : AugmentedLagrangianPreconditioner or None
        None when it could not be built (``setup_message`` says why).
    K : scipy sparse matrix or ndarray of shape (n + m, n + m)
    nit : int
        MINRES iterations of all solves so far.
    setup_time_s : float
        Seconds choosing ``rho`` and building the preconditioner.
    """

    def __init__(self, B, J, *, delta_c=0.0, preconditioner="auto", rho=None, rank=None, rng=None) -> None:
        B, J, delta_c = _check_system(B, J, delta_c)
        check_choice("preconditioner", preconditioner, PRECONDITIONERS)
        if rho is not None:
            check_positive("rho", rho)
        if rank is not None:
            check_int("rank", rank, 1)
        start = time.perf_counter()
        n, m = B.shape[0], J.shape[0]
        sparse = sp.issparse(B) or sp.issparse(J)
        if preconditioner == "auto":
            preconditioner = "factor" if sparse or n <= AUTO_FACTOR_MAX_N else "nystrom"
        self.method, self.n, self.m, self.delta_c = preconditioner, n, m, delta_c
        if sparse:
            B, J = sp.csr_array(B), sp.csr_array(J)
            self.K = sp.block_array([[B, J.T], [J, -delta_c * sp.eye_array(m) if delta_c else None]], format="csr")
        else:
            self.K = np.block([[B, J.T], [J, -delta_c * np.eye(m)]])
        rng = np.random.default_rng(rng)
        self.rho = _scale_rule(B, J, delta_c, rng) if rho is None else float(rho)
        self.preconditioner, self.setup_message, self.nit = None, "", 0
        if math.isinf(self.rho):
            self.setup_message = "J is rank deficient and delta_c = 0, so K is singular"
        else:
            failures = []
            for _ in range(RHO_ESCALATIONS + 1):
                try:
                    self.preconditioner = AugmentedLagrangianPreconditioner._from_checked(
                        B, J, self.rho, delta_c, preconditioner, rank, rng
                    )
                    break
                except np.linalg.LinAlgError as err:
                    failures.append(str(err))
                    self.rho *= 10.0
            else:
                self.rho /= 10.0
                self.setup_message = (
                    f"B + J^T J / w is not positive definite for any rho tried, so B is not positive definite on "
                    f"null(J) (or K is singular); last: {failures[-1]}"
                )
        self.setup_time_s = time.perf_counter() - start

    @property
    def rank(self) -> int | None:
        """The Nystrom rank now; None for ``"factor"`` or without a preconditioner."""
        return None if self.preconditioner is None else self.preconditioner.rank

    def solve(self, b, *, rtol: float, x0=None, max_iter: int | None = None, deadline: float | None = None):
        """Solve ``K z = b`` to ``||K z - b|| <= rtol ||b||`` (true residual).

        Parameters
        ----------
        b : ndarray of shape (n + m,)
        rtol : float
            ``> 0``.
        x0 : ndarray of shape (n + m,), optional
            Start, e.g. a previous solution to refine with a tighter ``rtol``.
        max_iter : int, optional
            MINRES iterations of this solve, all refinement passes (default ``10 (n + m)``).
        deadline : float, optional
            A ``time.perf_counter()`` value; past it the solve stops with ``Status.TIME_LIMIT``.

        Returns
        -------
        SaddlePointResult
        """
        N = self.n + self.m
        b = self._vector("b", b)
        x0 = None if x0 is None else self._vector("x0", x0)
        rtol = check_positive("rtol", rtol)
        max_iter = 10 * N if max_iter is None else check_int("max_iter", max_iter, 0)
        if deadline is not None and not isinstance(deadline, (int, float)):
            raise TypeError(f"deadline must be a time.perf_counter() value, got {type(deadline).__name__}")
        if self.preconditioner is None:
            return self._result(np.full(N, np.nan), Status.BREAKDOWN, self.setup_message, 0, math.nan)
        if not np.any(b):
            return self._result(np.zeros(N), Status.CONVERGED, "b = 0, so z = 0", 0, 0.0)
        monitor = Monitor(self.K, b, rtol, deadline, np.zeros(N) if x0 is None else x0)
        nit = 0
        budget = ITERS_PER_RANK if self.method == "nystrom" else max_iter
        stalled = False
        while monitor.best > rtol and nit < max_iter and not monitor.past_deadline():
            run = minres(
                self.K, monitor.start_pass(), rtol=PASS_RTOL, M=self.preconditioner,
                max_iter=min(budget, max_iter - nit), callback=monitor,
            )  # fmt: skip
            nit += run.nit
            self.nit += run.nit
            if run.status in (Status.BREAKDOWN, Status.NONFINITE) and monitor.best > rtol:
                return self._result(monitor.best_z, run.status, run.message, nit, monitor.best)
            if monitor.best <= rtol or monitor.timed_out or monitor.nonfinite:
                break
            if monitor.past_deadline():
                break  # a rank growth is one dense computation the deadline cannot interrupt
            if run.status is Status.MAX_ITER or not monitor.improved():
                # a Nystrom rank that does not reach the accuracy within its budget is too small
                try:
                    if self.method == "nystrom" and self.preconditioner.grow():
                        continue
                except np.linalg.LinAlgError as err:
                    message = f"a grown Nystrom sketch: B not positive definite on null(J), or rho too small; {err}"
                    return self._result(monitor.best_z, Status.BREAKDOWN, message, nit, monitor.best)
                budget = max_iter
            if run.status is not Status.MAX_ITER and not monitor.improved():
                stalled = True  # MINRES met PASS_RTOL in its own norm, and the true residual did not follow
                break
        z, residual = monitor.best_z, monitor.best
        if residual <= rtol:
            message = f"true relative residual {residual:.3e} <= rtol {rtol:.3e} after {nit} MINRES iterations"
            return self._result(z, Status.CONVERGED, message, nit, residual)
        if monitor.nonfinite:
            return self._result(z, Status.NONFINITE, "K z was not finite at an iterate", nit, residual)
        if monitor.timed_out:
            return self._result(z, Status.TIME_LIMIT, f"deadline passed after {nit} iterations", nit, residual)
        if stalled:
            message = (
                f"the true relative residual stalled at {residual:.3e} > rtol {rtol:.3e}: a refinement pass (MINRES "
                f"to {PASS_RTOL:g} of its start) did not multiply it by {PASS_DECREASE}"
            )
            return self._result(z, Status.STALLED, message, nit, residual)
        message = f"max_iter = {max_iter} MINRES iterations reached, true relative residual {residual:.3e}"
        return self._result(z, Status.MAX_ITER, message, nit, residual)

    def _vector(self, name: str, v) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        N = self.n + self.m
        if v.shape != (N,):
            raise ValueError(f"{name} must have shape ({N},) = (n + m,), got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN or inf")
        return v

    def _result(self, z, status, message, nit, residual) -> SaddlePointResult:
        return SaddlePointResult(z, status, message, nit, residual, self.rho, self.rank, self.method)


def solve_saddle_point(
    B,
    J,
    b,
    *,
    rtol: float,
    delta_c: float = 0.0,
    x0=None,
    preconditioner: str = "auto",
    rho: float | None = None,
    rank: int | None = None,
    max_iter: int | None = None,
    rng=None,
    deadline: float | None = None,
) -> SaddlePointResult:
    """Solve ``[[B, J^T], [J, -delta_c I]] z = b`` by preconditioned MINRES (one :class:`SaddlePointSolver` solve).

    Parameters
    ----------
    B : ndarray or scipy sparse matrix of shape (n, n)
        Symmetric, positive definite on ``null(J)``.
    J : ndarray or scipy sparse matrix of shape (m, n)
    b : ndarray of shape (n + m,)
    rtol : float
        Target ``||K z - b||_2 <= rtol ||b||_2`` (true residual).
    delta_c, preconditioner, rho, rank, rng :
        As in :class:`SaddlePointSolver`.
    x0, max_iter, deadline :
        As in :meth:`SaddlePointSolver.solve`.

    Returns
    -------
    SaddlePointResult

    Raises
    ------
    ValueError, TypeError
        Bad shapes, non-finite entries, an asymmetric ``B``, negative ``delta_c``, an unknown
        ``preconditioner``, bad ``rtol``/``rho``/``rank``/``max_iter`` (before any work).
    """
    B, J = _check_shapes(B, J)
    if np.shape(b) != (sum(J.shape),):
        raise ValueError(f"b must have shape ({sum(J.shape)},) = (n + m,), got {np.shape(b)}")
    check_positive("rtol", rtol)
    solver = SaddlePointSolver(B, J, delta_c=delta_c, preconditioner=preconditioner, rho=rho, rank=rank, rng=rng)
    return solver.solve(b, rtol=rtol, x0=x0, max_iter=max_iter, deadline=deadline)

"""Krylov solvers for linear systems ``A x = b``: conjugate gradients and MINRES.

Written once against the array namespace, so numpy arrays and torch tensors (CPU or CUDA)
run the same code; per iteration only the few scalars the recurrences need (inner products)
are read back to the host.

* :func:`cg` / :func:`pcg`: Hermitian positive definite ``A``, optional (required for ``pcg``)
  Hermitian positive definite preconditioner ``M ≈ A^{-1}``. Stops exactly as
  :func:`scipy.sparse.linalg.cg`: when the recurrence residual satisfies
  ``||r_k|| < max(rtol ||b||, atol)``, with ``max_iter = 10 n`` by default, so both take the
  same number of iterations on the same problem.
* :func:`minres`: Hermitian, possibly indefinite ``A - shift I``, Hermitian positive definite
  ``M``.
* :class:`CGIteration`: the CG recurrences as ``init``/``step``, for iterative solver objects
  that run their own driver loop.

Failures are statuses, never exceptions or silent wrong answers: a non-positive curvature
``p^H A p <= 0`` or ``r^H z <= 0`` gives ``Status.BREAKDOWN`` with the last good iterate,
NaN/inf gives ``Status.NONFINITE``. Bad input (shapes, backends, non-finite ``b`` or ``x0``,
negative tolerances) raises before any work.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .backend import backend_name, device_of, get_namespace
from ._linop_base import _is_complex, _result_dtype
from .linop import LinearOperator, aslinearoperator
from .result import Status

__all__ = ["CGIteration", "CGState", "KrylovResult", "cg", "minres", "pcg"]


@dataclass(frozen=True)
class KrylovResult:
    """What :func:`cg`, :func:`pcg` and :func:`minres` return.

    Attributes
    ----------
    x : array of shape (n,)
        The final iterate (the last good one after a breakdown), same backend/device as ``b``.
    status : Status
        ``CONVERGED``, ``MAX_ITER``, ``BREAKDOWN``, ``NONFINITE`` or ``USER_STOPPED``.
    message : str
        Why the solver stopped, with the iteration and values involved.
    nit : int
        Completed iterations.
    residual_norm : float
        Final residual norm from the recurrence (for :func:`minres` with ``M``, the ``M``-norm).
    matvecs : int
        Applications of ``A``.
    residual_history : tuple of float
        Residual norms, the initial one first, then one per iteration (``nit + 1`` values).
    """

    x: Any
    status: Status
    message: str
    nit: int
    residual_norm: float
    matvecs: int
    residual_history: tuple = ()

    @property
    def success(self) -> bool:
        """Whether the solver converged."""
        return self.status is Status.CONVERGED

    def __repr__(self) -> str:
        return (
            f"KrylovResult(status={self.status.name}, nit={self.nit}, residual_norm={self.residual_norm:.3e}, "
            f"matvecs={self.matvecs}, message={self.message!r})"
        )


# ----------------------------------------------------------------------------- validation
def _check_vector(name: str, v, A: LinearOperator):
    """``v`` as an array of ``A``'s backend/device with shape ``(n,)``, finite; else raise."""
    if backend_name(v) == "numpy" and not isinstance(v, np.ndarray):
        v = np.asarray(v)
    if backend_name(v) != A.backend or (A.backend == "torch" and device_of(v) != A.device):
        raise TypeError(
            f"{name} is a {backend_name(v)} array on {device_of(v)!r} but A is a {A.backend} operator "
            f"on {A.device!r}; convert one of them (A.to(...) or optkit.backend.convert)"
        )
    n = A.shape[1]
    if tuple(v.shape) != (n,):
        raise ValueError(
            f"{name} has shape {tuple(v.shape)} but A has shape {A.shape}; expected {name} of shape ({n},)"
        )
    xp = get_namespace(v)
    if not bool(xp.all(xp.isfinite(v))):
        raise ValueError(f"{name} contains NaN or inf")
    return v


def _check_operator(name: str, A, n: int | None = None) -> LinearOperator:
    A = aslinearoperator(A)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be square, got shape {A.shape}")
    if n is not None and A.shape[0] != n:
        raise ValueError(f"{name} has shape {A.shape} but A is {n}x{n}; expected {name} of shape ({n}, {n})")
    return A


def _check_tols(rtol, atol, max_iter, n: int, callback) -> tuple[float, float, int]:
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, (int, float, np.floating, np.integer)) and float(v) >= 0 and math.isfinite(float(v))):
            raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
    if max_iter is None:
        max_iter = 10 * n
    else:
        max_iter = operator.index(max_iter)
        if max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    return float(rtol), float(atol), max_iter


class _System:
    """Validated ``A``, ``b``, ``M``: working dtype, namespace, real inner product, ``||b||``."""

    def __init__(self, A, b, M=None) -> None:
        A = _check_operator("A", A)
        n = A.shape[0]
        b = _check_vector("b", b, A)
        if M is not None:
            M = _check_operator("M", M, n)
            if (M.backend, M.device) != (A.backend, A.device):
                raise TypeError(
                    f"M is a {M.backend} operator on {M.device!r} but A is a {A.backend} operator "
                    f"on {A.device!r}; convert M with M.to(...)"
                )
        xp = get_namespace(b)
        dtypes = [A.dtype, b.dtype] + ([] if M is None else [M.dtype])
        dtype = _result_dtype(A.backend, dtypes)
        if not xp.isdtype(dtype, ("real floating", "complex floating")):
            dtype = xp.float64
        if A.backend == "torch":  # torch kernels do not mix dtypes: move the operators once
            A = A if A.dtype == dtype else A.to(dtype=dtype)
            M = M if M is None or M.dtype == dtype else M.to(dtype=dtype)
        self.A, self.M, self.xp, self.dtype, self.n = A, M, xp, dtype, n
        self.b = xp.astype(b, dtype, copy=False)
        self._cplx = _is_complex(dtype)
        self.b_norm = math.sqrt(self.dot(self.b, self.b))

    def dot(self, a, b) -> float:
        """Real part of ``a^H b`` as a Python float (one device sync on CUDA)."""
        # ``a @ b`` rather than ``xp.vecdot``: array-api-compat's torch vecdot costs ~8x more.
        if self._cplx:
            return float(self.xp.real(self.xp.conj(a) @ b))
        return float(a @ b)

    def start(self, x0):
        """``(x, r, matvecs)`` for the initial guess ``x0`` (copied; zeros when None)."""
        xp = self.xp
        if x0 is None:
            return xp.zeros_like(self.b), xp.asarray(self.b, copy=True), 0
        x = xp.astype(_check_vector("x0", x0, self.A), self.dtype, copy=True)
        return x, self.b - self.A.matvec(x), 1

    def zero_rhs_result(self) -> KrylovResult:
        return KrylovResult(
            self.xp.zeros_like(self.b), Status.CONVERGED, "b = 0, so x = 0 solves the system", 0, 0.0, 0, (0.0,)
        )


def _finish(x, status, message, k, rnorm, tol, max_iter, matvecs, hist, method) -> KrylovResult:
    if status is Status.CONVERGED:
        message = f"{method} converged: residual norm {rnorm:.3e} < tolerance {tol:.3e} after {k} iterations"
    elif status is Status.MAX_ITER:
        message = (
            f"{method} reached max_iter={max_iter} iterations with residual norm {rnorm:.3e} >= tolerance {tol:.3e}"
        )
    elif status is Status.USER_STOPPED:
        message = f"{method} stopped by the callback after {k} iterations (residual norm {rnorm:.3e})"
    return KrylovResult(x, status, message, k, float(rnorm), matvecs, tuple(hist))


# ----------------------------------------------------------------------------- CG
@dataclass(frozen=True)
class CGState:
    """State of the (preconditioned) CG recurrences after ``k`` iterations.

    Attributes
    ----------
    x, r, z, p : arrays of shape (n,)
        Iterate, residual ``b - A x`` (from the recurrence), preconditioned residual ``M r``
        (``r`` itself without ``M``) and search direction.
    rz : float
        ``Re(r^H z)``.
    residual_norm : float
        ``||r||_2``.
    k : int
        Completed iterations.
    matvecs : int
        Applications of ``A`` so far.
    status : Status or None
        ``None`` while the recurrences can continue; ``BREAKDOWN`` or ``NONFINITE`` when they
        cannot (``x`` is then the last good iterate).
    message : str
        Explanation of ``status``.
    """

    x: Any
    r: Any
    z: Any
    p: Any
    rz: float
    residual_norm: float
    k: int = 0
    matvecs: int = 0
    status: Status | None = None
    message: str = ""


class CGIteration:
    """The CG recurrences as ``init`` / ``step``, shared by :func:`cg` and iterative solver objects.

    ``step`` updates the arrays of the state it is given **in place** (numpy and torch) and
    returns a new :class:`CGState` holding them, so keep only the latest state.

    Parameters
    ----------
    A : LinearOperator or anything :func:`optkit.linop.aslinearoperator` accepts
        Hermitian positive definite, shape ``(n, n)``.
    b : array of shape (n,)
        Finite, same backend and device as ``A``.
    M : LinearOperator, optional
        Hermitian positive definite preconditioner approximating ``A^{-1}``.

    Examples
    --------
    >>> it = CGIteration(A, b)                      # doctest: +SKIP
    >>> state, tol = it.init(), it.tolerance(rtol=1e-8)
    >>> while not it.converged(state, tol) and state.status is None:
    ...     state = it.step(state)
    """

    def __init__(self, A, b, *, M=None) -> None:
        sys_ = _System(A, b, M)
        self._sys = sys_
        self.A, self.M, self.b, self.xp, self.dtype = sys_.A, sys_.M, sys_.b, sys_.xp, sys_.dtype
        self.b_norm = sys_.b_norm

    def tolerance(self, rtol: float = 1e-5, atol: float = 0.0) -> float:
        """The absolute stopping threshold ``max(rtol ||b||, atol)``."""
        return max(rtol * self.b_norm, atol)

    @staticmethod
    def converged(state: CGState, tol: float) -> bool:
        """``||r_k|| < tol`` (scipy's test), or an exactly zero residual."""
        return state.residual_norm < tol or state.residual_norm == 0.0

    def init(self, x0=None) -> CGState:
        """The state at iteration 0 from ``x0`` (zeros when None; validated and copied)."""
        sys_ = self._sys
        x, r, mv = sys_.start(x0)
        rr = sys_.dot(r, r)
        if self.M is None:
            z, rz = r, rr
        else:
            z = self.M.matvec(r)
            rz = sys_.dot(r, z)
        p = self.xp.asarray(z, copy=True)
        status, msg = None, ""
        if not (math.isfinite(rr) and math.isfinite(rz)):
            status, msg = Status.NONFINITE, "the initial residual b - A x0 (or M applied to it) is not finite"
        elif rz <= 0 and rr > 0:
            status, msg = (
                Status.BREAKDOWN,
                (f"the preconditioner is not positive definite: r^H M r = {rz:.3e} <= 0 at iteration 0"),
            )
        return CGState(x, r, z, p, rz, math.sqrt(rr), 0, mv, status, msg)

    def step(self, s: CGState) -> CGState:
        """One CG iteration from ``s`` (arrays updated in place); a state with a status is returned as is."""
        if s.status is not None:
            return s
        sys_, x, r, p = self._sys, s.x, s.r, s.p
        k = s.k + 1
        q = self.A.matvec(p)
        pq = sys_.dot(p, q)
        if not math.isfinite(pq):
            return replace(
                s,
                matvecs=s.matvecs + 1,
                status=Status.NONFINITE,
                message=f"a non-finite value appeared in A @ p at iteration {k}; x is the iterate of iteration {k - 1}",
            )
        if pq <= 0:
            return replace(
                s,
                matvecs=s.matvecs + 1,
                status=Status.BREAKDOWN,
                message=f"the operator is not positive definite: p^H A p = {pq:.3e} <= 0 at iteration {k}; "
                f"x is the iterate of iteration {k - 1}",
            )
        alpha = s.rz / pq
        x += alpha * p
        r -= alpha * q
        rr = sys_.dot(r, r)
        if self.M is None:
            z, rz = r, rr
        else:
            z = self.M.matvec(r)
            rz = sys_.dot(r, z)
        rnorm = math.sqrt(rr) if rr >= 0 else math.nan
        if not (math.isfinite(rr) and math.isfinite(rz)):
            return CGState(
                x,
                r,
                z,
                p,
                rz,
                rnorm,
                k,
                s.matvecs + 1,
                Status.NONFINITE,
                f"a non-finite value appeared in the residual or in M @ r at iteration {k}",
            )
        if rz <= 0 and rr > 0:
            return CGState(
                x,
                r,
                z,
                p,
                rz,
                rnorm,
                k,
                s.matvecs + 1,
                Status.BREAKDOWN,
                f"the preconditioner is not positive definite: r^H M r = {rz:.3e} <= 0 at iteration {k}",
            )
        beta = rz / s.rz
        p *= beta
        p += z
        return CGState(x, r, z, p, rz, rnorm, k, s.matvecs + 1)


def _run_cg(method, A, b, x0, rtol, atol, max_iter, M, callback) -> KrylovResult:
    it = CGIteration(A, b, M=M)
    if x0 is not None:
        _check_vector("x0", x0, it.A)
    rtol, atol, max_iter = _check_tols(rtol, atol, max_iter, it.A.shape[0], callback)
    if it.b_norm == 0:
        return it._sys.zero_rhs_result()
    tol = it.tolerance(rtol, atol)
    s = it.init(x0)
    hist = [s.residual_norm]
    user_stop = False
    while True:
        if it.converged(s, tol):
            status = Status.CONVERGED
        elif s.status is not None:
            status = s.status
        elif user_stop:
            status = Status.USER_STOPPED
        elif s.k >= max_iter:
            status = Status.MAX_ITER
        else:
            k0 = s.k
            s = it.step(s)
            if s.k > k0:
                hist.append(s.residual_norm)
                if callback is not None and s.status is None:
                    user_stop = bool(callback(s.x))
            continue
        return _finish(s.x, status, s.message, s.k, s.residual_norm, tol, max_iter, s.matvecs, hist, method)


def cg(
    A,
    b,
    x0=None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    max_iter: int | None = None,
    M=None,
    callback: Callable | None = None,
) -> KrylovResult:
    """Solve ``A x = b`` for Hermitian positive definite ``A`` by (preconditioned) conjugate gradients.

    Parameters
    ----------
    A : LinearOperator, array, sparse matrix, tensor or scipy LinearOperator, shape (n, n)
    b : array of shape (n,)
        numpy array or torch tensor (any device), same backend/device as ``A``; finite.
    x0 : array of shape (n,), optional
        Initial guess (not modified); zeros by default.
    rtol, atol : float
        Stop when ``||b - A x_k|| < max(rtol ||b||, atol)`` (recurrence residual), as scipy.
    max_iter : int, optional
        Default ``10 n``.
    M : LinearOperator, optional
        Hermitian positive definite preconditioner approximating ``A^{-1}``.
    callback : callable, optional
        ``callback(x_k)`` after each iteration; returning True stops with ``USER_STOPPED``.

    Returns
    -------
    KrylovResult
        ``x`` has the promoted dtype of ``A``, ``b`` (and ``M``), at least floating.

    Raises
    ------
    ValueError
        Shape mismatch, non-square ``A``/``M``, non-finite ``b``/``x0``, negative tolerances or ``max_iter``.
    TypeError
        Mixed backends or devices, or an ``A`` that is not an operator.
    """
    return _run_cg("CG", A, b, x0, rtol, atol, max_iter, M, callback)


def pcg(
    A,
    b,
    x0=None,
    *,
    M,
    rtol: float = 1e-5,
    atol: float = 0.0,
    max_iter: int | None = None,
    callback: Callable | None = None,
) -> KrylovResult:
    """:func:`cg` with a required preconditioner ``M`` (Hermitian positive definite, ``≈ A^{-1}``).

    A preconditioner that is not positive definite (``r^H M r <= 0``) ends with ``Status.BREAKDOWN``.
    """
    if M is None:
        raise ValueError("pcg needs a preconditioner M (a LinearOperator approximating A^{-1}); use cg without one")
    return _run_cg("PCG", A, b, x0, rtol, atol, max_iter, M, callback)


# ----------------------------------------------------------------------------- MINRES
def minres(
    A,
    b,
    x0=None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    max_iter: int | None = None,
    M=None,
    shift: float = 0.0,
    callback: Callable | None = None,
) -> KrylovResult:
    """Solve ``(A - shift I) x = b`` for Hermitian, possibly indefinite ``A`` by MINRES.

    Lanczos on ``A - shift I`` (preconditioned by ``M``) with Givens rotations, minimising the
    residual over the Krylov subspace (Paige and Saunders, 1975).

    Parameters
    ----------
    A : LinearOperator or anything :func:`optkit.linop.aslinearoperator` accepts, shape (n, n)
    b : array of shape (n,)
        Finite, same backend and device as ``A``.
    x0 : array of shape (n,), optional
        Initial guess (not modified); zeros by default.
    rtol, atol : float
        Stop when the residual norm from the recurrence ``< max(rtol ||b||, atol)``. With ``M``
        both norms are ``M``-norms, ``||v||_M = sqrt(v^H M v)``.
    max_iter : int, optional
        Default ``10 n``.
    M : LinearOperator, optional
        Hermitian positive definite preconditioner; ``v^H M v < 0`` gives ``Status.BREAKDOWN``.
    shift : float
        Real shift ``s`` of ``A - s I``.
    callback : callable, optional
        ``callback(x_k)`` after each iteration; returning True stops with ``USER_STOPPED``.

    Returns
    -------
    KrylovResult
    """
    sys_ = _System(A, b, M)
    A, M, xp, dot = sys_.A, sys_.M, sys_.xp, sys_.dot
    if x0 is not None:
        _check_vector("x0", x0, A)
    rtol, atol, max_iter = _check_tols(rtol, atol, max_iter, sys_.n, callback)
    if not (isinstance(shift, (int, float, np.floating, np.integer)) and math.isfinite(float(shift))):
        raise ValueError(f"shift must be a finite real number, got {shift!r}")
    shift = float(shift)
    b_norm = sys_.b_norm if M is None else math.sqrt(max(dot(sys_.b, M.matvec(sys_.b)), 0.0))
    if sys_.b_norm == 0:
        return sys_.zero_rhs_result()
    tol = max(rtol * b_norm, atol)

    x, r1, mv = sys_.start(x0)
    if x0 is not None and shift:
        r1 = r1 + shift * x
    y = r1 if M is None else M.matvec(r1)
    beta1sq = dot(r1, y)
    status, message = None, ""
    if not math.isfinite(beta1sq):
        status = Status.NONFINITE
        message = "the initial residual b - (A - shift I) x0 (or M applied to it) is not finite"
    elif beta1sq < 0:
        status, message = Status.BREAKDOWN, f"the preconditioner is not positive definite: r^H M r = {beta1sq:.3e} < 0"
    beta = phibar = math.sqrt(max(beta1sq, 0.0))
    hist = [phibar]
    r2 = r1
    oldb, dbar, epsln, cs, sn = 0.0, 0.0, 0.0, -1.0, 0.0
    w = w2 = xp.zeros_like(x)
    k, user_stop = 0, False
    while status is None:
        if phibar < tol or phibar == 0.0:
            status = Status.CONVERGED
            break
        if user_stop:
            status = Status.USER_STOPPED
            break
        if k >= max_iter:
            status = Status.MAX_ITER
            break
        # Lanczos step on A - shift I: beta_{k+1} v_{k+1} = (A - s I) v_k - alpha_k v_k - beta_k v_{k-1}
        v = y / beta
        y = A.matvec(v)
        mv += 1
        if shift:
            y = y - shift * v
        if k > 0:
            y = y - (beta / oldb) * r1
        alfa = dot(v, y)
        if not math.isfinite(alfa):
            status, message = Status.NONFINITE, f"a non-finite value appeared in A @ v at iteration {k + 1}"
            break
        y = y - (alfa / beta) * r2
        r1, r2 = r2, y
        y = r2 if M is None else M.matvec(r2)
        betasq = dot(r2, y)
        if not math.isfinite(betasq):
            status = Status.NONFINITE
            message = f"a non-finite value appeared in the Lanczos vector at iteration {k + 1}"
            break
        if betasq < 0:
            status, message = (
                Status.BREAKDOWN,
                (f"the preconditioner is not positive definite: r^H M r = {betasq:.3e} < 0 at iteration {k + 1}"),
            )
            break
        oldb, beta = beta, math.sqrt(betasq)
        # apply the previous rotation to the new column of T_k, then build the next one
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = math.hypot(gbar, beta)
        if gamma == 0.0:
            status, message = (
                Status.BREAKDOWN,
                (
                    f"A - shift I is singular on the Krylov subspace at iteration {k + 1} "
                    "(the system may be inconsistent)"
                ),
            )
            break
        cs, sn = gbar / gamma, beta / gamma
        phi, phibar = cs * phibar, sn * phibar
        w_new = (v - oldeps * w2 - delta * w) / gamma
        w2, w = w, w_new
        x += phi * w_new
        k += 1
        hist.append(phibar)
        if callback is not None:
            user_stop = bool(callback(x))
    return _finish(x, status, message, k, phibar, tol, max_iter, mv, hist, "MINRES")

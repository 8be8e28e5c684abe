"""Private to :mod:`solvers.ot.sns`: the sparsified Newton system of Sinkhorn-Newton-Sparse.

What one Newton step of ``sns`` solves and how it measures the step, apart from the driver:

* **Sparsification**: how many entries of the plan to keep (:func:`keep_count`), which
  (:func:`top_entries`, :func:`select_entries`), and the sparsified Hessian as a sparse
  operator (:func:`sparsified_hessian`, for inspection and tests).
* **Newton direction**: the Schur-complement CG solve of the shifted, gauge-fixed
  sparsified system (:func:`_newton_direction`).
* **Line-search helpers**: the cancellation-free curvature term of the Armijo test
  (:func:`_curvature_term`), ``max_ij |u_i + v_j|`` (:func:`_max_abs_sum`), and the clipped
  in-place exp that forms plans (:func:`_exp_`, :func:`_plan_and_sums`).

The public names are re-exported by :mod:`solvers.ot.sns`; import them from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from optkit.backend import device_of, get_namespace, is_torch
from optkit.krylov import KrylovResult, cg
from optkit.linop import Diagonal, FunctionOperator, Sparse
from optkit.result import Status

from ._dual import kernels, log_plan

__all__ = ["START_FACTOR", "keep_count", "select_entries", "sparsified_hessian", "top_entries"]

#: The adaptive selection keeps at least ``START_FACTOR * max(n, m)`` entries (the paper's
#: density ``2 / n`` on a square plan).
START_FACTOR = 2

# Below this bound on max |t_ij| the Armijo curvature term is summed from its Taylor series
# (full relative accuracy); above it from plan sums (absolute error ~ eps * sum P, harmless
# there because the term is then large).
_SERIES_T = 1e-3

# exp floor of the plans formed in the Newton stage (see _exp_)
_CLIP = {"float64": -700.0, "float32": -85.0}


# ----------------------------------------------------------------------------- sparsification
def keep_count(n: int, m: int, density: float) -> int:
    """``ceil(density * n * m)`` clipped to ``[1, n m]``: how many entries of ``P`` a fixed
    ``density`` keeps."""
    return int(min(n * m, max(1, math.ceil(density * n * m))))


def top_entries(P: Any, k: int) -> tuple[Any, Any, Any]:
    """``(rows, cols, vals)`` of the ``k`` largest entries of ``P`` (n, m), in no particular
    order, without the zeros among them (so possibly fewer than ``k``).

    numpy: ``np.argpartition``; torch: ``torch.topk`` (any device). O(n m) either way.
    """
    n, m = P.shape
    N = n * m
    k = min(k, N)
    flat = P.reshape(-1)
    if is_torch(P):
        import torch

        vals, idx = torch.topk(flat, k, sorted=False)
        rows = torch.div(idx, m, rounding_mode="floor")
        cols = idx - rows * m
    else:
        idx = np.argpartition(flat, N - k)[N - k :] if k < N else np.arange(N)
        rows, cols = np.divmod(idx, m)
        vals = flat[idx]
    positive = vals > 0
    if not bool(positive.all()):
        rows, cols, vals = rows[positive], cols[positive], vals[positive]
    return rows, cols, vals


def select_entries(P: Any, mass: float, k: int, drop_tol: float | None) -> tuple[Any, Any, Any, int]:
    """``(rows, cols, vals, count)``: the entries of ``P`` that the sparsified Hessian keeps.

    ``drop_tol=None``: the ``k`` largest (:func:`top_entries`); ``count`` is ``k``. Otherwise
    adaptive: every positive entry at or above a power-of-2 threshold, the largest threshold
    at which the mass left out is at most ``drop_tol * mass`` and at least ``k`` entries are
    kept (all positive entries, when there are fewer); ``mass`` is the plan's total ``sum P``
    and ``count`` the number kept. The kept set is the minimal one up to one binade: the
    entries in ``[t, 2 t)`` for the threshold ``t`` could not all be left out. Two O(n m)
    passes: a histogram of the entries by binary exponent (count and mass per binade), then
    the collection (numpy: compiled loops; torch: ``frexp``, ``bincount`` and a mask).
    """
    if drop_tol is None:
        rows, cols, vals = top_entries(P, k)
        return rows, cols, vals, k
    counts, masses, edges = _binades(P)
    # kept count and mass when everything from binade b upwards is kept, for every b
    kept_count = np.cumsum(counts[::-1])[::-1]
    kept_mass = np.cumsum(masses[::-1])[::-1]
    enough = (mass - kept_mass <= drop_tol * mass) & (kept_count >= min(k, int(kept_count[0])))
    top = int(np.flatnonzero(enough)[-1]) if enough.any() else 0
    return (*_entries_at_least(P, float(edges[top]), int(kept_count[top])), int(kept_count[top]))


def _binades(P: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per binade of the positive entries of ``P``, in ascending order: the count, the mass
    (float64) and the lower edge (0 for the subnormal one), as numpy arrays."""
    if is_torch(P):
        import torch

        flat = P.reshape(-1)
        positive = flat[flat > 0]
        _, exponent = torch.frexp(positive)  # x = mantissa * 2**exponent, mantissa in [0.5, 1)
        info = np.finfo(str(P.dtype).removeprefix("torch."))
        lowest = info.minexp - info.nmant + 1  # frexp's exponent of the smallest subnormal
        bins = (exponent - lowest).to(torch.int64)
        size = info.maxexp - lowest + 1
        counts = torch.bincount(bins, minlength=size).cpu().numpy()
        masses = torch.bincount(bins, weights=positive.to(torch.float64), minlength=size).cpu().numpy()
        with np.errstate(over="ignore"):  # the edge above float64's range: inf, never reached
            return counts, masses, np.ldexp(1.0, np.arange(size) + lowest - 1)
    info = np.finfo(P.dtype)
    width = info.bits
    field = width - 1 - info.nmant  # bits of the biased exponent field
    counts = np.zeros(2**field, dtype=np.int64)
    masses = np.zeros(2**field, dtype=np.float64)
    flat = np.ascontiguousarray(P).reshape(-1)
    kernels().binade_histogram(flat, flat.view(np.dtype(f"int{width}")), info.nmant, 2**field - 1, counts, masses)
    bias = 2 ** (field - 1) - 1
    with np.errstate(over="ignore"):  # the inf/nan field's edge: inf, never reached
        edges = np.ldexp(1.0, np.arange(2**field) - bias)
    edges[0] = 0.0  # subnormals
    return counts, masses, edges


def _entries_at_least(P: Any, threshold: float, count: int) -> tuple[Any, Any, Any]:
    """``(rows, cols, vals)`` of the positive entries ``>= threshold`` (``count`` of them)."""
    if is_torch(P):
        import torch

        flat = P.reshape(-1)
        idx = torch.nonzero((flat >= threshold) & (flat > 0)).reshape(-1)
        rows = torch.div(idx, P.shape[1], rounding_mode="floor")
        return rows, idx - rows * P.shape[1], flat[idx]
    rows, cols = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.int64)
    vals = np.empty(count, dtype=P.dtype)
    written = kernels().entries_at_least(np.ascontiguousarray(P), threshold, count, rows, cols, vals)
    return rows[:written], cols[:written], vals[:written]


def _sparse(rows: Any, cols: Any, vals: Any, shape: tuple[int, int]) -> Sparse:
    """A :class:`~optkit.linop.Sparse` operator (scipy CSR or torch sparse CSR) from COO triplets."""
    if is_torch(vals):
        import torch

        return Sparse(torch.sparse_coo_tensor(torch.stack((rows, cols)), vals, shape, check_invariants=False))
    return Sparse(sp.csr_array((vals, (rows, cols)), shape=shape))


def sparsified_hessian(
    P: Any, reg: float, *, density: float | None = None, drop_tol: float = 1e-6, shift: float = 0.0
) -> Sparse:
    """The sparsified Hessian that models the dual at a plan ``P``, as a sparse
    ``(n + m, n + m)`` operator (for inspection and tests; the solver works on its Schur
    complement instead):

    ``-(1/reg) [[(1 + shift) diag(P 1), P_k], [P_k^T, (1 + shift) diag(P^T 1)]]``

    ``P_k`` holds the entries :func:`select_entries` keeps: the ``keep_count(n, m, density)``
    largest, or with ``density=None`` the adaptive choice with at least ``START_FACTOR * max(n, m)``
    with ``drop_tol``. The diagonal is **exact**: the row and column sums of the full ``P``.
    The matrix is negative semidefinite because the diagonal dominates the kept off-diagonal
    entries.
    """
    n, m = P.shape
    xp = get_namespace(P)
    P1, PT1 = xp.sum(P, axis=1), xp.sum(P, axis=0)
    if density is None:
        rows, cols, vals, _ = select_entries(P, float(xp.sum(P1)), START_FACTOR * max(n, m), drop_tol)
    else:
        rows, cols, vals, _ = select_entries(P, float(xp.sum(P1)), keep_count(n, m, density), None)
    device = device_of(P)
    idx_n = xp.arange(n, device=device)
    idx_m = xp.arange(m, device=device)
    all_rows = xp.concat((idx_n, n + idx_m, rows, n + cols))
    all_cols = xp.concat((idx_n, n + idx_m, n + cols, rows))
    all_vals = -xp.concat(((1.0 + shift) * P1, (1.0 + shift) * PT1, vals, vals)) / reg
    return _sparse(all_rows, all_cols, all_vals, (n + m, n + m))


# ----------------------------------------------------------------------------- Newton direction
@dataclass(frozen=True)
class _Direction:
    df: Any
    dg: Any
    slope: float  # grad^T (df, dg); > 0 for an ascent direction
    status: Status
    message: str
    matvecs: int


def _newton_direction(
    P1: Any,
    PT1: Any,
    gf: Any,
    gg: Any,
    reg: float,
    selection: tuple[Any, Any, Any],
    *,
    rtol: float,
    max_iter: int,
    jacobi: bool,
    shift: float = 0.0,
    cg_solve: Callable[..., KrylovResult] = cg,
) -> _Direction:
    """The sparsified Newton direction ``(df, dg) = reg * Hs^{-1} (gf, gg)``, where
    ``Hs = [[(1 + shift) diag(P1), P_k], [P_k^T, (1 + shift) diag(PT1)]]`` and ``P_k`` is
    given by ``selection = (rows, cols, vals)``.

    The larger side ``e`` (rows if ``n >= m``) is eliminated. Let ``K`` be the kept block
    oriented ``e x s``, ``d_e`` and ``d_s`` the shifted exact diagonals, and ``(h_e, h_s)``
    the matching gradient parts. CG solves the Schur complement system
    ``(diag(d_s) - K^T diag(1/d_e) K) y = h_s - K^T (h_e / d_e)`` for the kept side, with
    the variable of largest ``d_s`` fixed to 0 (gauge: that heaviest column is connected
    to the rest of the kept graph; its row and column of the system are the identity's and
    its right-hand side 0), then ``x = (h_e - K y) / d_e``. On numpy the products run over
    the COO triplets in compiled loops (:class:`_KeptBlock`). CG starts from zero on a
    positive definite system, so even an unconverged (``MAX_ITER``) iterate gives an ascent
    direction: ``grad^T d = reg (h_e^T D_e^-1 h_e + rhs^T y) > 0``.

    ``cg_solve`` is the CG routine (:func:`optkit.krylov.cg` by default); the solver passes
    the ``cg`` of :mod:`solvers.ot.sns`, so that substituting that one reaches this solve.
    """
    xp = get_namespace(P1)
    n, m = P1.shape[0], PT1.shape[0]
    rows, cols, vals = selection
    dtype, device = P1.dtype, device_of(P1)
    if n >= m:
        d_e, d_s, h_e, h_s, ei, si, ne, ns = P1, PT1, gf, gg, rows, cols, n, m
    else:
        d_e, d_s, h_e, h_s, ei, si, ne, ns = PT1, P1, gg, gf, cols, rows, m, n
    if shift:
        d_e, d_s = (1.0 + shift) * d_e, (1.0 + shift) * d_s
    inv_de = 1.0 / d_e
    K = _KeptBlock(ei, si, vals, inv_de, d_s, ne, ns)
    rhs = h_s - K.rmatvec(h_e * inv_de)
    y = xp.zeros(ns, dtype=dtype, device=device)
    status, message, matvecs = Status.CONVERGED, "", 0
    if ns > 1:
        # the gauge: the heaviest kept-side variable is held at 0 by giving its row and column
        # the identity's (the system stays of full size; CG keeps that entry at 0 throughout)
        j0 = int(xp.argmax(d_s))
        b = xp.asarray(rhs, copy=True)
        b[j0] = 0.0
        if not bool(xp.all(xp.isfinite(b))):
            return _Direction(None, None, math.nan, Status.NONFINITE, "the Newton right-hand side is not finite", 0)
        S = FunctionOperator(
            (ns, ns),
            lambda v: K.pinned_schur(v, j0),
            lambda v: K.pinned_schur(v, j0),
            dtype=dtype,
            tags=("symmetric", "psd"),
            backend="torch" if is_torch(P1) else "numpy",
            device=device,
        )
        M = None
        if jacobi:
            w = vals * vals * inv_de[ei]
            if is_torch(P1):
                diag_s = d_s - xp.zeros(ns, dtype=dtype, device=device).index_add_(0, si, w)
            else:
                # bincount sums in float64: back to the problem's dtype
                diag_s = d_s - np.bincount(si, weights=w, minlength=ns).astype(dtype, copy=False)
            # d_s - sum_e K^2 / d_e >= 0 in exact arithmetic; guard rounding
            diag_s = xp.maximum(diag_s, 1e-12 * d_s)
            diag_s[j0] = 1.0
            M = Diagonal(1.0 / diag_s)
        res = cg_solve(S, b, rtol=rtol, max_iter=max_iter, M=M)
        status, message, matvecs = res.status, res.message, res.matvecs
        if status in (Status.BREAKDOWN, Status.NONFINITE):
            return _Direction(None, None, math.nan, status, message, matvecs)
        y = res.x
        y[j0] = 0.0
    x = (h_e - K.matvec(y)) * inv_de
    d_elim, d_keep = reg * x, reg * y
    df, dg = (d_elim, d_keep) if n >= m else (d_keep, d_elim)
    slope = float(xp.sum(gf * df) + xp.sum(gg * dg))
    return _Direction(df, dg, slope, status, message, matvecs)


class _KeptBlock:
    """The kept block ``K`` (``ne x ns``, COO triplets ``(ei, si, vals)``) and the products
    of a Newton step: ``K y``, ``K^T x`` and the pinned Schur complement (see
    :func:`~solvers.ot._kernels.pinned_schur_matvec`). numpy: compiled loops over the
    triplets, no sparse matrix is built; torch: sparse CSR tensors (any device)."""

    def __init__(self, ei, si, vals, inv_de, d_s, ne, ns) -> None:
        self.ei, self.si, self.vals, self.inv_de, self.d_s = ei, si, vals, inv_de, d_s
        self.torch = is_torch(vals)
        if self.torch:
            self.K = _sparse(ei, si, vals, (ne, ns))
            self.KT = _sparse(si, ei, vals, (ns, ne))
        else:
            self.scratch = np.empty(ne, dtype=vals.dtype)

    def matvec(self, y):
        if self.torch:
            return self.K.matvec(y)
        return kernels().coo_matvec(self.ei, self.si, self.vals, y, np.empty(self.inv_de.shape[0], dtype=y.dtype))

    def rmatvec(self, x):
        if self.torch:
            return self.KT.matvec(x)
        return kernels().coo_matvec(self.si, self.ei, self.vals, x, np.empty(self.d_s.shape[0], dtype=x.dtype))

    def pinned_schur(self, v, j0):
        if self.torch:
            pinned = v.clone()
            pinned[j0] = 0.0
            out = self.d_s * pinned - self.KT.matvec(self.K.matvec(pinned) * self.inv_de)
            out[j0] = v[j0]
            return out
        out = np.empty_like(v)
        return kernels().pinned_schur_matvec(
            self.ei, self.si, self.vals, self.inv_de, self.d_s, j0, v, self.scratch, out
        )


# ----------------------------------------------------------------------------- line search helpers
def _curvature_term(P, P1, PT1, mass, new_mass, df, dg, alpha, reg) -> float:
    """``sum_ij P_ij phi(t_ij)`` with ``phi(t) = e^t - 1 - t`` and
    ``t_ij = alpha (df_i + dg_j) / reg``, so that exactly
    ``D(z + alpha d) - D(z) = alpha grad^T d - reg * (this)``.

    When every ``|t_ij|`` is below ``_SERIES_T`` the term is summed from the Taylor series of
    ``phi`` (relative accuracy ~1e-11 however small ``t`` is), so the Armijo test still
    means something at marginal errors near machine precision. Otherwise it is
    ``new_mass - mass - alpha (P1^T df + PT1^T dg) / reg``, with ``mass = sum P`` and
    ``new_mass = sum P_new`` (O(n + m), since the sums are needed anyway).
    """
    xp = get_namespace(P)
    sf, sg = (alpha / reg) * df, (alpha / reg) * dg
    if _max_abs_sum(sf, sg) >= _SERIES_T:
        return new_mass - mass - float(xp.sum(P1 * sf) + xp.sum(PT1 * sg))
    if not is_torch(P):
        return float(kernels().curvature_series(P, sf, sg))
    T = sf[:, None] + sg[None, :]
    return float(xp.sum(P * (T * T) * (0.5 + T * (1.0 / 6.0 + T * (1.0 / 24.0)))))


def _max_abs_sum(u, v) -> float:
    """``max_ij |u_i + v_j|`` in O(n + m): the larger of ``max u + max v`` and ``-(min u + min v)``."""
    xp = get_namespace(u, v)
    return max(float(xp.max(u)) + float(xp.max(v)), -(float(xp.min(u)) + float(xp.min(v))))


def _exp_(Z):
    """``exp(Z)`` in place (``Z`` is a fresh temporary), after raising ``Z`` to ``_CLIP``
    (``exp(-700) ~ 1e-304`` in float64). Arguments that underflow take libm's slow path (a
    pass is ~2x slower on the plans here), and entries that small cannot change any sum."""
    if is_torch(Z):
        return Z.clamp_(min=_CLIP.get(str(Z.dtype).removeprefix("torch."), -700.0)).exp_()
    np.maximum(Z, _CLIP.get(Z.dtype.name, -700.0), out=Z)
    return np.exp(Z, out=Z)


def _trial_plan(f, g, C, reg, z_limit):
    """The plan ``exp((f_i + g_j - C_ij) / reg)`` (exponents raised to ``_CLIP``, as
    :func:`_exp_`), or None when an exponent exceeds ``z_limit`` (the plan would overflow): the
    check comes before the exp pass. On numpy the exponents, their clip and their maximum are
    one compiled pass (:func:`~solvers.ot._kernels.log_plan_clipped`)."""
    if is_torch(C):
        Z = log_plan(f, g, C, reg)
        return _exp_(Z) if float(Z.max()) <= z_limit else None
    Z = np.empty_like(C)
    z_max = kernels().log_plan_clipped(f, g, C, 1.0 / reg, _CLIP.get(C.dtype.name, -700.0), Z)
    return np.exp(Z, out=Z) if z_max <= z_limit else None


def _plan_and_sums(f, g, C, reg):
    """``(P 1, P^T 1, P)`` at ``(f, g)``, from :func:`_dual.log_plan` and :func:`_exp_`."""
    P = _exp_(log_plan(f, g, C, reg))
    return P.sum(1), P.sum(0), P

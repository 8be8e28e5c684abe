"""The dual-side math of entropic OT, written once for every backend.

Shared by the ``sinkhorn`` solver and by ``sns`` (its Sinkhorn stage). Conventions are
those of :class:`optkit.OTProblem`: potentials ``f`` (n,) and ``g`` (m,) in cost units, and
the plan ``P_ij = exp((f_i + g_j - C_ij) / reg)``.

Shapes
    ``f``, ``log_a``, ``a``, ``P1``: (n,); ``g``, ``log_b``, ``b``, ``PT1``: (m,);
    ``C`` and ``P``: (n, m).
Backends
    numpy arrays, or torch tensors on any device (CPU or CUDA). All array arguments of one
    call share one backend, device and floating dtype; ``reg`` is a positive Python float.
    Results come back on the same backend and device, in the same dtype. No input is
    modified.

``log_a = log(a)`` may hold ``-inf`` for zero weights; the matching potential is then
``-inf`` and that row (column) of the plan is exactly zero.

Reachable accuracy
    A plan formed in a floating dtype carries a marginal error of its own, from rounding
    ``(f_i + g_j - C_ij) / reg``; no iteration removes it. :func:`rounding_level` estimates
    it, :class:`StallWatch` notices that a run stopped improving, and
    :func:`unreachable_message` says so. The OT solvers use them for one rule: ``CONVERGED``
    only when the marginal error measured on the plan they return is ``<= tol``;
    ``STALLED`` when the error has not reached a new low for :data:`STALL_CHECKS` checks
    while below the rounding level, with a message naming the dtype and the accuracy
    reached.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optkit.backend import get_namespace, is_torch

__all__ = [
    "STALL_CHECKS",
    "StallWatch",
    "log_plan",
    "marginal_violation",
    "marginals",
    "plan",
    "rounding_level",
    "sinkhorn_sweep",
    "unreachable_message",
    "update_f",
    "update_g",
]

# After the max-shift every exponent is <= 0 and the largest term is 1. glibc's exp is 2-4x
# slower for arguments below about -300 (and slowest where results are subnormal or
# underflow), so exponents are clipped first where that cannot change a sum: a clipped term
# adds at most exp(-300) ~ 5e-131 (float64; exp(-80) ~ 2e-35 for float32) instead of less.
_CLIP = {np.dtype(np.float64): -300.0, np.dtype(np.float32): -80.0}


def kernels():
    """:mod:`solvers.ot._kernels`, imported on first use: numba is not imported with the solvers."""
    from . import _kernels

    return _kernels


def log_plan(f: Any, g: Any, C: Any, reg: float) -> Any:
    """``(f_i + g_j - C_ij) / reg``, the log of the plan, shape (n, m)."""
    return (f[:, None] + g[None, :] - C) / reg


def plan(f: Any, g: Any, C: Any, reg: float) -> Any:
    """``P_ij = exp((f_i + g_j - C_ij) / reg)``, shape (n, m)."""
    L = log_plan(f, g, C, reg)  # a fresh array: exponentiate in place
    return L.exp_() if is_torch(L) else np.exp(L, out=L)


def marginals(f: Any, g: Any, C: Any, reg: float) -> tuple[Any, Any, Any]:
    """``(P 1, P^T 1, P)``: the row sums (n,), column sums (m,) and the plan (n, m) at ``(f, g)``.

    One pass of ``exp`` over the (n, m) array (the cost of half a Sinkhorn sweep).
    """
    P = plan(f, g, C, reg)
    return P.sum(1), P.sum(0), P


def marginal_violation(P1: Any, PT1: Any, a: Any, b: Any) -> float:
    """``||P1 - a||_1 + ||PT1 - b||_1``, the L1 violation of both marginals, as a Python float.

    On CUDA this reads one number back (a device synchronisation).
    """
    xp = get_namespace(P1, PT1, a, b)
    return float(xp.sum(xp.abs(P1 - a)) + xp.sum(xp.abs(PT1 - b)))


def _softmin_numpy(h: np.ndarray, C: np.ndarray, reg: float, axis: int, work: np.ndarray | None) -> np.ndarray:
    """``logsumexp((h - C) / reg)`` along ``axis`` (1: ``h`` is (m,), over j; 0: ``h`` is (n,),
    over i), max-shifted, in ``work`` (an (n, m) C-contiguous scratch array of C's dtype,
    allocated if None). The shifted, scaled and clipped exponents come from one compiled pass
    (:func:`solvers.ot._kernels.shifted_exponents`), their ``exp`` from numpy in place; a line
    whose terms are all ``-inf`` gives ``-inf``."""
    C = np.ascontiguousarray(C)
    work = np.empty_like(C) if work is None else work
    shift = np.empty(C.shape[0] if axis == 1 else C.shape[1], dtype=C.dtype)
    inv_reg = 1.0 / reg
    kernels().shifted_exponents(h, C, inv_reg, _CLIP.get(C.dtype, -300.0), axis, work, shift)
    np.exp(work, out=work)
    # the clipped terms keep every sum positive, so an all -inf line is log(s) + -inf = -inf
    out = np.log(work.sum(axis=axis))
    out += shift * inv_reg
    return out


def _softmin_torch(h: Any, C: Any, reg: float, axis: int) -> Any:
    """:func:`_softmin_numpy` for tensors. On CUDA the fused ``torch.logsumexp``; on the CPU
    the same max-shift and clip as numpy (about 5x faster there at small ``reg``, where
    ``torch.logsumexp`` spends its time on underflowing exponentials)."""
    import torch

    t = (h[None, :] - C) if axis == 1 else (h[:, None] - C)
    if C.device.type != "cpu":
        return torch.logsumexp(t.div_(reg), dim=axis)
    mx = t.amax(dim=axis, keepdim=True)
    finite = torch.isfinite(mx)
    mx = torch.where(finite, mx, torch.zeros_like(mx))
    clip = _CLIP[np.dtype(np.float64)] if C.dtype == torch.float64 else _CLIP[np.dtype(np.float32)]
    t.sub_(mx).mul_(1.0 / reg).clamp_(min=clip).exp_()
    out = t.sum(dim=axis).log_().add_(mx.squeeze(axis), alpha=1.0 / reg)
    return torch.where(finite.squeeze(axis), out, torch.full_like(out, -math.inf))


def update_f(g: Any, log_a: Any, C: Any, reg: float, work: Any = None) -> Any:
    """The exact maximiser over ``f`` of the dual given ``g``: afterwards ``P 1 = a``.

    ``f_i = reg * (log a_i - logsumexp_j((g_j - C_ij) / reg))``. ``work`` (numpy only) is an
    optional (n, m) scratch array of C's dtype, overwritten, to save the allocation.
    """
    if is_torch(C):
        return reg * (log_a - _softmin_torch(g, C, reg, 1))
    return reg * (log_a - _softmin_numpy(g, C, reg, 1, work))


def update_g(f: Any, log_b: Any, C: Any, reg: float, work: Any = None) -> Any:
    """The exact maximiser over ``g`` of the dual given ``f``: afterwards ``P^T 1 = b``.

    ``g_j = reg * (log b_j - logsumexp_i((f_i - C_ij) / reg))``; ``work`` as in :func:`update_f`.
    """
    if is_torch(C):
        return reg * (log_b - _softmin_torch(f, C, reg, 0))
    return reg * (log_b - _softmin_numpy(f, C, reg, 0, work))


def sinkhorn_sweep(f: Any, g: Any, log_a: Any, log_b: Any, C: Any, reg: float, *, work: Any = None) -> tuple[Any, Any]:
    """One full log-domain Sinkhorn iteration; returns the new ``(f, g)``.

    First ``f`` is set to the exact maximiser of the dual given ``g`` (so ``P 1 = a``), then
    ``g`` to the one given the new ``f`` (so ``P^T 1 = b``); see :func:`update_f`,
    :func:`update_g`. The old ``f`` is not used (it is accepted for symmetry with other
    dual updates). Cost: two max-shifted logsumexp passes over the (n, m) array; on numpy
    ``work`` is an optional (n, m) scratch array reused by both passes.

    The row marginal of the *input* point can be read off for free:
    ``P(f, g) 1 = a * exp((f - f_new) / reg)``.
    """
    f = update_f(g, log_a, C, reg, work)
    g = update_g(f, log_b, C, reg, work)
    return f, g


# ----------------------------------------------------------------------------- reachable accuracy
#: Checks in a row without a new smallest marginal error after which a run whose error is
#: below :func:`rounding_level` has stalled: at that level the error is rounding noise, and a
#: noisy error still sets a new low now and then, so one check without progress is no proof.
STALL_CHECKS = 20


def rounding_level(f: Any, g: Any, C_absmax: float, reg: float, mass: float) -> float:
    """A generous estimate of the L1 marginal error that rounding alone leaves at ``(f, g)``.

    Rounding the exponent of ``P_ij = exp((f_i + g_j - C_ij) / reg)`` costs about
    ``eps (|f_i| + |g_j| + |C_ij|) / reg`` of relative accuracy in ``P_ij`` (``eps`` of the
    potentials' dtype), and the sums add a few ``eps``. Measured at convergence (float32 and
    float64, ``reg`` from 0.1 to 5e-4, both the look-ahead error of Sinkhorn and the error
    of the formed plan) the noise stays below ``7 eps mass (1 + s)`` with
    ``s = (max|f| + max|g| + max|C|) / reg`` over finite potentials; this returns
    ``16 eps mass (1 + s)``. ``C_absmax`` is ``max|C|`` and ``mass`` is ``sum a``.
    """
    xp = get_namespace(f, g)
    f_max = float(xp.max(xp.where(xp.isfinite(f), xp.abs(f), 0.0)))
    g_max = float(xp.max(xp.where(xp.isfinite(g), xp.abs(g), 0.0)))
    eps = float(xp.finfo(f.dtype).eps)
    return 16.0 * eps * mass * (1.0 + (f_max + g_max + C_absmax) / reg)


class StallWatch:
    """Counts the checks since the marginal error last reached a new low.

    ``update(error)`` at every check; :attr:`stalled` is True after :data:`STALL_CHECKS`
    checks in a row without a new low.
    """

    __slots__ = ("best", "since")

    def __init__(self) -> None:
        self.best = math.inf
        self.since = 0

    def update(self, error: float) -> None:
        if error < self.best:
            self.best, self.since = error, 0
        else:
            self.since += 1

    @property
    def stalled(self) -> bool:
        return self.since >= STALL_CHECKS


def unreachable_message(error: float, tol: float, dtype: Any) -> str:
    """The message of a run that stalled at the rounding level of ``dtype`` above ``tol``."""
    name = str(dtype).removeprefix("torch.")
    advice = "a larger tol" if name == "float64" else "a larger tol or float64"
    return (
        f"the marginal error stopped decreasing at {error:.3g}, above tol={tol:g}: that is the rounding "
        f"level of {name} on this problem, the attainable accuracy is about {error:.1g}; use {advice}"
    )

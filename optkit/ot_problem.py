"""The entropic optimal-transport problem kind, and the measures every OT solver is judged by.

Primal (``reg`` > 0, ``H(P) = sum P (log P - 1)``)::

    min_P  <P, C> + reg * H(P)   subject to   P 1 = a,  P^T 1 = b,  P >= 0

Dual, over potentials ``f`` (n,) and ``g`` (m,) in cost units::

    max_{f, g}  <f, a> + <g, b> - reg * sum_ij exp((f_i + g_j - C_ij) / reg)

with the optimal plan ``P_ij = exp((f_i + g_j - C_ij) / reg)``. POT's ``reg`` is this
``reg``; the SNS paper's ``eta`` is ``1 / reg`` and its potentials are ``x = f + reg/2``,
``y = g + reg/2``. Every OT solver returns the plan as ``Result.x`` and the potentials
as ``Result.extras["potentials"] = (f, g)``, so :meth:`OTProblem.evaluate` measures all
of them the same way.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from .backend import backend_name, convert, device_of, get_namespace, is_torch, to_numpy
from .problem import Problem

__all__ = ["OTProblem", "dual_objective", "marginal_error", "plan_cost", "round_to_marginals"]


def _check_marginal_shape(name: str, v: Any) -> None:
    if getattr(v, "ndim", None) != 1 or v.shape[0] == 0 or not hasattr(v, "dtype"):
        raise ValueError(f"{name} must be a non-empty 1-D array of weights, got shape {getattr(v, 'shape', None)}")


def _check_marginal_values(name: str, v: Any) -> None:
    vn = to_numpy(v)
    if not np.all(np.isfinite(vn)):
        raise ValueError(f"{name} contains NaN or inf; expected finite non-negative weights")
    if np.any(vn < 0):
        raise ValueError(f"{name} has negative entries (min {vn.min():.3g}); expected non-negative weights")
    if vn.sum() <= 0:
        raise ValueError(f"{name} has zero total mass; expected positive total mass")


def _check_reg(reg: Any) -> float:
    """``reg`` as a Python float: any real scalar (Python or numpy number, 0-d array or tensor)
    that is finite and ``> 0``; bools are refused."""
    if (isinstance(reg, np.ndarray) or is_torch(reg)) and reg.ndim == 0:
        reg = reg.item()
    if isinstance(reg, (bool, np.bool_)) or not isinstance(reg, numbers.Real) or not (0 < reg < math.inf):
        raise ValueError(f"reg must be a positive finite number, got {reg!r}")
    return float(reg)


def _kind(v: Any) -> str:
    """numpy's dtype kind of ``v`` ("b", "i", "u", "f", "c", ...), tensors included."""
    if is_torch(v):
        dtype = v.dtype
        if dtype.is_complex:
            return "c"
        return "f" if dtype.is_floating_point else ("b" if str(dtype) == "torch.bool" else "i")
    return v.dtype.kind


def _common_float_dtype(arrays: dict[str, Any]) -> Any:
    """The dtype ``a``, ``b`` and ``C`` are brought to: the promotion of the floating ones,
    or, when all are integer or bool, the default float dtype (float64 on numpy, torch's
    default dtype on torch)."""
    for name, v in arrays.items():
        if _kind(v) not in "biuf":
            raise TypeError(f"{name} must hold real numbers (bool, integer or floating), got dtype {v.dtype}")
    floating = [v.dtype for v in arrays.values() if _kind(v) == "f"]
    if backend_name(arrays["C"]) == "torch":
        import torch

        if not floating:
            return torch.get_default_dtype()
        return functools.reduce(torch.promote_types, floating)
    return np.result_type(*floating) if floating else np.dtype(np.float64)


def _eps(dtype: Any) -> float:
    if isinstance(dtype, np.dtype):
        return float(np.finfo(dtype).eps)
    import torch

    return float(torch.finfo(dtype).eps)


def _sums(P: Any) -> tuple[Any, Any]:
    """Row and column sums of a dense (numpy/torch) or scipy-sparse plan, as 1-D arrays."""
    if hasattr(P, "tocsr"):  # scipy.sparse
        return np.asarray(P.sum(axis=1)).ravel(), np.asarray(P.sum(axis=0)).ravel()
    return P.sum(axis=1), P.sum(axis=0)


def plan_cost(P: Any, C: Any) -> float:
    """``<P, C>`` for a dense (numpy/torch) or scipy-sparse plan."""
    if hasattr(P, "multiply") and not is_torch(P):
        return float(P.multiply(to_numpy(C)).sum())
    return float((P * C).sum())


def marginal_error(P: Any, a: Any, b: Any) -> float:
    """``||P 1 - a||_1 + ||P^T 1 - b||_1``: the L1 violation of both marginals."""
    rows, cols = _sums(P)
    return float(abs(rows - a).sum()) + float(abs(cols - b).sum())


def dual_objective(f: Any, g: Any, a: Any, b: Any, C: Any, reg: float) -> float:
    """The entropic dual ``<f, a> + <g, b> - reg * sum exp((f_i + g_j - C_ij) / reg)``.

    A potential of ``-inf`` on a zero weight (a solver's way of emptying that row or column)
    contributes 0, not NaN.
    """
    xp = get_namespace(f, g, C)
    linear = xp.sum(xp.where(a > 0, f, 0.0) * a) + xp.sum(xp.where(b > 0, g, 0.0) * b)
    return float(linear - reg * xp.sum(xp.exp((f[:, None] + g[None, :] - C) / reg)))


def round_to_marginals(P: Any, a: Any, b: Any) -> Any:
    """The Altschuler–Weed–Rigollet rounding of ``P`` onto the transport polytope of ``(a, b)``.

    Scales rows down to at most ``a``, columns down to at most ``b``, then adds the rank-one
    correction ``err_a err_b^T / ||err_a||_1``; the result has exactly the marginals ``a``, ``b``
    (up to rounding) and differs from ``P`` by at most twice its marginal error in L1.
    Dense numpy or torch ``P`` (a scipy-sparse plan is densified).
    """
    if hasattr(P, "toarray"):
        P = P.toarray()
    xp = get_namespace(P, a, b)
    rows = xp.sum(P, axis=1)
    scale = xp.where(rows > a, a / xp.where(rows > 0, rows, 1.0), 1.0)
    P = P * scale[:, None]
    cols = xp.sum(P, axis=0)
    scale = xp.where(cols > b, b / xp.where(cols > 0, cols, 1.0), 1.0)
    P = P * scale[None, :]
    err_a = a - xp.sum(P, axis=1)
    err_b = b - xp.sum(P, axis=0)
    mass = xp.sum(err_a)
    if float(mass) > 0:
        P = P + err_a[:, None] * err_b[None, :] / mass
    return P


class OTProblem(Problem):
    """Entropy-regularised optimal transport between weights ``a`` and ``b`` with cost ``C``.

    Parameters
    ----------
    a : array of shape (n,)
        Source weights, non-negative, finite, positive total mass (numpy or torch).
    b : array of shape (m,)
        Target weights, same total mass as ``a`` (relative tolerance ``max(1e-8, (n + m) eps)``,
        ``eps`` of the problem's dtype, so float32 weights normalised in float32 pass).
    C : array of shape (n, m)
        Finite ground cost, same backend and device as ``a`` and ``b``.
    reg : real scalar
        Entropic regularisation ``> 0`` (POT's ``reg``; the SNS paper's ``eta = 1/reg``): a
        Python or numpy number, or a 0-d array or tensor; bools, inf and NaN are refused.
        Stored as a Python float.
    name, metadata :
        As in :class:`~optkit.problem.Problem`. Known values used by :meth:`evaluate`:
        ``metadata["dual_ref"]`` (a high-precision optimal dual value) and
        ``metadata["emd_cost"]`` (the exact unregularised OT cost).

    ``x0`` is the zero dual point, shape (n + m,) (``f`` then ``g``); the solution a solver
    returns in ``Result.x`` is the plan (n, m).

    **One floating dtype.** ``a``, ``b`` and ``C`` are stored in one floating dtype
    (:attr:`dtype`): the promotion of those given in floating point; integer and bool arrays
    take that dtype, or, when all three are integer or bool, the default float dtype
    (float64 on numpy, ``torch.get_default_dtype()`` on torch). Arrays already of that dtype
    are kept without copying. Complex arrays are refused. Every OT solver returns its plan
    and potentials in this dtype.
    """

    kind: ClassVar[str] = "ot"

    def __init__(
        self,
        a: Any,
        b: Any,
        C: Any,
        reg: float,
        *,
        name: str = "ot",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        _check_marginal_shape("a", a)
        _check_marginal_shape("b", b)
        n, m = a.shape[0], b.shape[0]
        if getattr(C, "shape", None) != (n, m) or not hasattr(C, "dtype"):
            raise ValueError(f"C must have shape ({n}, {m}) to match a and b, got {getattr(C, 'shape', None)}")
        arrays = {"a": a, "b": b, "C": C}
        if len({backend_name(v) for v in arrays.values()}) > 1 or len({device_of(v) for v in arrays.values()}) > 1:
            raise TypeError("a, b and C must share one backend and device")
        dtype = _common_float_dtype(arrays)
        _check_marginal_values("a", a)
        _check_marginal_values("b", b)
        if not np.all(np.isfinite(to_numpy(C))):
            raise ValueError("C contains NaN or inf; expected a finite cost matrix")
        reg = _check_reg(reg)
        backend, device = backend_name(C), device_of(C)
        a, b, C = (convert(v, backend, device if backend == "torch" else None, dtype) for v in (a, b, C))
        if backend == "numpy":  # once here: the solvers' compiled passes read C row by row
            C = np.ascontiguousarray(C)
        # float64 sums of the weights as given; the allowance covers rounding each weight
        # to the problem's dtype (float32 weights that sum to 1 can differ by ~1e-7)
        mass_a, mass_b = float(to_numpy(a).sum(dtype=np.float64)), float(to_numpy(b).sum(dtype=np.float64))
        if abs(mass_a - mass_b) > max(1e-8, (n + m) * _eps(dtype)) * max(mass_a, mass_b):
            raise ValueError(f"a and b must have the same total mass, got {mass_a!r} and {mass_b!r}")
        xp = get_namespace(C)
        super().__init__(name, xp.zeros(n + m, dtype=dtype, device=device), metadata)
        self.a, self.b, self.C, self.reg = a, b, C, reg

    @property
    def dtype(self) -> Any:
        """The one floating dtype of ``a``, ``b``, ``C`` and of every solver's plan and potentials
        (a numpy dtype, or a torch dtype on torch)."""
        return self.C.dtype

    @property
    def eta(self) -> float:
        """``1 / reg``, the SNS paper's inverse regularisation."""
        return 1.0 / self.reg

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, m)``: the plan's shape."""
        return (self.a.shape[0], self.b.shape[0])

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"cost_matrix"})

    def evaluate(self, x: Any, extras: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Measures of a plan ``x`` (n, m), dense or scipy-sparse, and of the potentials
        ``extras["potentials"] = (f, g)`` when given:

        ``marginal_error`` (L1, both marginals), ``cost`` ``<P, C>``;
        ``dual`` (the entropic dual objective at the potentials, unless
        ``extras["regularization"]`` names another regulariser) and ``dual_gap``
        (``metadata["dual_ref"] - dual``) when known; ``emd_gap``: the relative gap of the
        rounded plan's cost to ``metadata["emd_cost"]`` when known (the absolute gap when
        that cost is 0).
        """
        P = x
        out = {"marginal_error": marginal_error(P, self.a, self.b)}
        out["cost"] = plan_cost(P, self.C)
        extras = extras or {}
        potentials = extras.get("potentials")
        # Potentials of another regulariser (extras["regularization"], e.g. the
        # sparsity-constrained OT of solver sparse-ot) solve another dual: no entropic value.
        if potentials is not None and extras.get("regularization", "entropic") == "entropic":
            out["dual"] = dual_objective(potentials[0], potentials[1], self.a, self.b, self.C, self.reg)
            if self.metadata.get("dual_ref") is not None:
                out["dual_gap"] = float(self.metadata["dual_ref"]) - out["dual"]
        emd_cost = self.metadata.get("emd_cost")
        if emd_cost is not None:
            rounded = round_to_marginals(P, self.a, self.b)
            # relative to the exact cost, or absolute when that cost is 0 (identical marginals)
            out["emd_gap"] = (plan_cost(rounded, self.C) - float(emd_cost)) / (abs(float(emd_cost)) or 1.0)
        return out

    def _converted(self, conv: Callable[[Any], Any]) -> OTProblem:
        return OTProblem(conv(self.a), conv(self.b), conv(self.C), self.reg, name=self.name, metadata=self.metadata)

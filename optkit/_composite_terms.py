"""The two terms of a composite problem: datafits ``L(z)`` and separable penalties ``g(x)``.

Re-exported from :mod:`optkit.composite_problem`. Every term is written once against the
array namespace (:func:`optkit.backend.get_namespace`), so it evaluates numpy arrays and
torch tensors (CPU or CUDA) alike; ``.to(backend, device, dtype)`` moves the arrays a term
holds. Values are returned as 0-d arrays of the input's backend, so that a caller on the
GPU decides when to synchronise.

Conventions (they fix the duality gap of :meth:`CompositeProblem.duality_gap`):

- A datafit is ``L(z)`` of the predictions ``z = A x`` (shape (m,)), with ``grad(z) = dL/dz``,
  ``curvature()`` an upper bound on every second derivative ``d^2 L / dz_i^2`` (``L`` is
  separable in ``z``), and, where it has one, its Fenchel conjugate
  ``conjugate(u) = sup_z u^T z - L(z)`` (``+inf`` outside its domain).
- A penalty is ``g(x)``, separable over blocks (coordinates, or the groups of
  :class:`GroupL1`): ``value``, ``prox(x, step)`` (the proximal map of ``step * g``) and
  ``subdiff_distance(x, grad)`` (per block, the distance of ``-grad`` to the subdifferential of
  ``g`` at ``x``: zero at a solution). Penalties of the form ``lam * h`` with ``h`` a gauge
  (:class:`L1`, :class:`L1NonNegative`, :class:`GroupL1`) also have ``dual_norm(v)``: the
  smallest ``lam'`` with ``v`` in the subdifferential of ``lam' * h`` at 0, so that the
  conjugate ``g*(v)`` is 0 when ``dual_norm(v) <= lam`` and ``+inf`` otherwise.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backend import backend_name, convert, device_of, get_namespace, is_torch, to_numpy
from .validation import check_nonnegative

__all__ = [
    "L1",
    "Box",
    "Datafit",
    "GroupL1",
    "L1NonNegative",
    "LogisticDatafit",
    "Penalty",
    "QuadraticDatafit",
]


def _check_vector(name: str, v: Any) -> Any:
    """``v`` as a 1-D floating array (numpy unless a tensor); ``ValueError`` unless finite."""
    if backend_name(v) == "numpy":
        v = np.asarray(v)
        if v.dtype.kind not in "f":
            v = v.astype(np.float64)
    elif not v.dtype.is_floating_point:
        v = v.double()
    if v.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {tuple(v.shape)}")
    xp = get_namespace(v)
    if not bool(xp.all(xp.isfinite(v))):
        raise ValueError(f"{name} contains NaN or inf; expected finite values")
    return v


def _xlogx(xp, a: Any) -> Any:
    """``a log a`` elementwise for ``a >= 0``, with ``0 log 0 = 0``."""
    positive = a > 0
    return xp.where(positive, a * xp.log(xp.where(positive, a, 1.0)), 0.0)


# ----------------------------------------------------------------------------- datafits


class Datafit(abc.ABC):
    """The smooth part ``L(z)`` of a composite problem, a function of the predictions ``z``.

    Attributes
    ----------
    target : array of shape (m,)
        The per-prediction data (regression targets or labels); sets the backend.
    """

    def __init__(self, target: Any) -> None:
        self.target = target

    @property
    def size(self) -> int:
        """``m``, the number of predictions."""
        return int(self.target.shape[0])

    @abc.abstractmethod
    def value(self, z: Any) -> Any:
        """``L(z)`` for ``z`` of shape (m,), a 0-d array."""

    @abc.abstractmethod
    def grad(self, z: Any) -> Any:
        """``dL/dz``, shape (m,)."""

    @abc.abstractmethod
    def curvature(self) -> float:
        """An upper bound on ``d^2 L / dz_i^2`` for every ``i`` and ``z``."""

    def conjugate(self, u: Any) -> Any:
        """The Fenchel conjugate ``L*(u) = sup_z u^T z - L(z)``, a 0-d array (``inf`` outside
        its domain). Datafits without one leave this unimplemented: no duality gap then."""
        raise NotImplementedError(f"{type(self).__name__} has no Fenchel conjugate")

    def to(self, backend: str, device: str | None = None, dtype: Any = None) -> "Datafit":
        """The same datafit with ``target`` on ``backend``/``device``/``dtype`` (subclasses whose
        constructor takes more than the target override this)."""
        return type(self)(convert(self.target, backend, device, dtype))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(m={self.size})"


class QuadraticDatafit(Datafit):
    """``L(z) = ||z - b||^2 / (2 m)``: least squares, the datafit of the Lasso.

    Parameters
    ----------
    b : array of shape (m,)
        Finite targets, numpy or torch (non-floating input becomes float64).

    Notes
    -----
    ``grad(z) = (z - b) / m``, ``curvature() = 1 / m``, and
    ``L*(u) = u^T b + (m / 2) ||u||^2``.
    """

    def __init__(self, b: Any) -> None:
        super().__init__(_check_vector("b", b))

    @property
    def b(self) -> Any:
        """The targets, shape (m,)."""
        return self.target

    def value(self, z: Any) -> Any:
        r = z - self.target
        return (r @ r) / (2 * self.size)

    def grad(self, z: Any) -> Any:
        return (z - self.target) / self.size

    def curvature(self) -> float:
        return 1.0 / self.size

    def conjugate(self, u: Any) -> Any:
        return u @ self.target + 0.5 * self.size * (u @ u)


class LogisticDatafit(Datafit):
    """``L(z) = (1/m) sum_i log(1 + exp(-y_i z_i))``: logistic loss, labels ``y_i = +-1``.

    Parameters
    ----------
    y : array of shape (m,)
        Labels, each ``-1`` or ``+1`` (numpy or torch).

    Notes
    -----
    Evaluated through ``logaddexp``, so no overflow for large margins.
    ``grad(z)_i = -y_i sigma(-y_i z_i) / m`` (``sigma`` the logistic function),
    ``curvature() = 1 / (4 m)`` (``sigma(t) sigma(-t) <= 1/4``), and with ``w_i = m y_i u_i``::

        L*(u) = (1/m) sum_i [(-w_i) log(-w_i) + (1 + w_i) log(1 + w_i)]   if every w_i in [-1, 0]

    and ``+inf`` otherwise (``0 log 0 = 0``; ``w`` within a few rounding errors of the
    interval counts as inside and is clipped to it).
    """

    def __init__(self, y: Any) -> None:
        y = _check_vector("y", y)
        xp = get_namespace(y)
        if not bool(xp.all((y == 1) | (y == -1))):
            raise ValueError("y must hold labels -1 or +1 only")
        super().__init__(y)

    @property
    def y(self) -> Any:
        """The labels, shape (m,)."""
        return self.target

    def value(self, z: Any) -> Any:
        xp = get_namespace(z)
        return xp.mean(xp.logaddexp(xp.zeros_like(z), -self.target * z))

    def grad(self, z: Any) -> Any:
        xp = get_namespace(z)
        margins = self.target * z
        # sigma(-t) = exp(-log(1 + exp(t))): no overflow for large |t|
        return -self.target * xp.exp(-xp.logaddexp(xp.zeros_like(z), margins)) / self.size

    def curvature(self) -> float:
        return 0.25 / self.size

    def conjugate(self, u: Any) -> Any:
        xp = get_namespace(u)
        w = self.size * self.target * u
        # at the dual point of a gradient, w = -s sigma(.) in [-1, 0] up to the rounding of
        # dividing by m in grad and multiplying by m here
        slack = 8 * xp.finfo(w.dtype).eps
        if not bool(xp.all((w >= -1 - slack) & (w <= slack))):
            return xp.asarray(math.inf, dtype=w.dtype, device=device_of(w))
        w = xp.clip(w, min=-1.0, max=0.0)
        return xp.sum(_xlogx(xp, -w) + _xlogx(xp, 1 + w)) / self.size


# ----------------------------------------------------------------------------- penalties


def _check_step(step: Any, n_blocks: int) -> Any:
    """``step`` if it is a positive finite scalar or a positive finite array of shape (n_blocks,)."""
    if getattr(step, "ndim", None) == 0:
        step = float(step)
    if isinstance(step, (int, float, np.floating, np.integer)) and not isinstance(step, bool):
        if not 0 < step < math.inf:
            raise ValueError(f"step must be a positive finite number, got {step!r}")
        return float(step)
    shape = tuple(getattr(step, "shape", ()))
    if shape != (n_blocks,):
        raise ValueError(
            f"step must be a positive number or an array of shape ({n_blocks},) (one per block), got {step!r}"
        )
    xp = get_namespace(step)
    if not bool(xp.all((step > 0) & xp.isfinite(step))):
        raise ValueError("step must hold positive finite numbers")
    return step


class Penalty(abc.ABC):
    """A separable, proper, closed convex ``g(x)`` with a cheap proximal map.

    Subclasses implement ``value``, ``prox`` and ``subdiff_distance``, and ``check_size`` and
    ``to`` when they hold per-coordinate data; the gauge penalties (``lam * h``) add ``lam``
    and ``dual_norm`` (see the module docstring).
    """

    @abc.abstractmethod
    def value(self, x: Any) -> Any:
        """``g(x)`` for ``x`` of shape (n,), a 0-d array (``inf`` outside the domain)."""

    def n_blocks(self, n: int) -> int:
        """How many blocks ``g`` separates into for ``n`` unknowns (``n`` unless grouped)."""
        return n

    @abc.abstractmethod
    def prox(self, x: Any, step: Any) -> Any:
        """``argmin_y g(y) step + ||y - x||^2 / 2``, shape (n,).

        ``step`` is a positive float or an array of shape (n_blocks,): one step per block,
        for coordinate methods.
        """

    @abc.abstractmethod
    def subdiff_distance(self, x: Any, grad: Any) -> Any:
        """Per block, the distance of ``-grad`` to the subdifferential of ``g`` at ``x``.

        Shape (n_blocks,), non-negative (``inf`` where ``x`` is outside the domain); all zero
        exactly when ``x`` minimises ``f + g`` for a smooth ``f`` with gradient ``grad``.
        """

    def dual_norm(self, v: Any) -> float:
        """The smallest ``lam'`` with ``v`` in the subdifferential of ``lam' h`` at 0 (gauges only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a gauge penalty: no dual norm")

    def check_size(self, n: int) -> None:
        """``ValueError`` unless the penalty applies to ``n`` unknowns."""

    def to(self, backend: str, device: str | None = None, dtype: Any = None) -> "Penalty":
        """The same penalty with its arrays (if any) on ``backend``/``device``/``dtype``."""
        return self


class L1(Penalty):
    """``g(x) = lam ||x||_1``.

    Parameters
    ----------
    lam : float
        Finite, ``>= 0``.

    Notes
    -----
    ``prox``: soft thresholding ``sign(x) max(|x| - step lam, 0)``. ``subdiff_distance``:
    ``|grad_j + lam sign(x_j)|`` where ``x_j != 0``, ``max(|grad_j| - lam, 0)`` where
    ``x_j = 0``. ``dual_norm(v) = ||v||_inf``.
    """

    def __init__(self, lam: float) -> None:
        self.lam = check_nonnegative("lam", lam)

    def value(self, x: Any) -> Any:
        xp = get_namespace(x)
        return self.lam * xp.sum(xp.abs(x))

    def prox(self, x: Any, step: Any) -> Any:
        xp = get_namespace(x)
        threshold = _check_step(step, x.shape[0]) * self.lam
        return xp.sign(x) * xp.clip(xp.abs(x) - threshold, min=0.0)

    def subdiff_distance(self, x: Any, grad: Any) -> Any:
        xp = get_namespace(x, grad)
        return xp.where(x != 0, xp.abs(grad + self.lam * xp.sign(x)), xp.clip(xp.abs(grad) - self.lam, min=0.0))

    def dual_norm(self, v: Any) -> float:
        xp = get_namespace(v)
        return float(xp.max(xp.abs(v)))

    def __repr__(self) -> str:
        return f"L1(lam={self.lam!r})"


class L1NonNegative(Penalty):
    """``g(x) = lam sum_j x_j`` on ``x >= 0``, ``+inf`` elsewhere (non-negative Lasso).

    Parameters
    ----------
    lam : float
        Finite, ``>= 0``.

    Notes
    -----
    ``prox``: ``max(x - step lam, 0)``. ``subdiff_distance``: ``|grad_j + lam|`` where
    ``x_j > 0``, ``max(-grad_j - lam, 0)`` where ``x_j = 0``, ``inf`` where ``x_j < 0``.
    ``dual_norm(v) = max(max_j v_j, 0)``.
    """

    def __init__(self, lam: float) -> None:
        self.lam = check_nonnegative("lam", lam)

    def value(self, x: Any) -> Any:
        xp = get_namespace(x)
        total = self.lam * xp.sum(x)
        return xp.where(xp.all(x >= 0), total, math.inf)

    def prox(self, x: Any, step: Any) -> Any:
        xp = get_namespace(x)
        return xp.clip(x - _check_step(step, x.shape[0]) * self.lam, min=0.0)

    def subdiff_distance(self, x: Any, grad: Any) -> Any:
        xp = get_namespace(x, grad)
        at_zero = xp.clip(-grad - self.lam, min=0.0)
        return xp.where(x > 0, xp.abs(grad + self.lam), xp.where(x == 0, at_zero, math.inf))

    def dual_norm(self, v: Any) -> float:
        xp = get_namespace(v)
        return max(float(xp.max(v)), 0.0)

    def __repr__(self) -> str:
        return f"L1NonNegative(lam={self.lam!r})"


class GroupL1(Penalty):
    """``g(x) = lam sum_g ||x_g||_2`` over disjoint groups covering every coordinate.

    Parameters
    ----------
    lam : float
        Finite, ``>= 0``.
    groups : sequence of sequences of int
        A partition of ``range(n)``: non-empty, disjoint, covering every index once.

    Notes
    -----
    The blocks are the groups, in the order given: ``prox`` takes one step per group and
    ``subdiff_distance`` returns one distance per group, ``||grad_g + lam x_g / ||x_g|| ||``
    where ``x_g != 0`` and ``max(||grad_g|| - lam, 0)`` where ``x_g = 0``. ``prox`` is block
    soft thresholding ``x_g max(1 - step lam / ||x_g||, 0)``.
    ``dual_norm(v) = max_g ||v_g||_2``.
    """

    def __init__(self, lam: float, groups: Sequence[Sequence[int]]) -> None:
        self.lam = check_nonnegative("lam", lam)
        try:
            members = [np.asarray(g) for g in groups]
        except TypeError:
            raise ValueError(f"groups must be a sequence of index sequences, got {groups!r}") from None
        if not members or any(g.ndim != 1 or g.size == 0 or g.dtype.kind not in "iu" for g in members):
            raise ValueError("groups must be a non-empty sequence of non-empty sequences of integers")
        flat = np.concatenate(members)
        n = flat.size
        if not np.array_equal(np.sort(flat), np.arange(n)):
            raise ValueError(
                f"groups must partition range({n}): every index 0..{n - 1} in exactly one group "
                "(an index repeats, is missing, or is out of range)"
            )
        self.groups = [g.astype(np.int64) for g in members]
        self.n = n
        self._group_of = np.empty(n, dtype=np.int64)
        for k, g in enumerate(self.groups):
            self._group_of[g] = k

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return len(self.groups)

    def n_blocks(self, n: int) -> int:
        return self.n_groups

    def check_size(self, n: int) -> None:
        if n != self.n:
            raise ValueError(f"GroupL1's groups partition range({self.n}), but the problem has n = {n} unknowns")

    def _group_sums(self, v: Any) -> Any:
        # the array API has no segment sum: bincount on numpy, index_add on torch
        if is_torch(v):
            return v.new_zeros(self.n_groups).index_add_(0, self._group_of, v)
        return np.bincount(self._group_of, weights=v, minlength=self.n_groups).astype(v.dtype, copy=False)

    def _group_norms(self, x: Any) -> Any:
        return get_namespace(x).sqrt(self._group_sums(x * x))

    def _per_coordinate(self, per_group: Any) -> Any:
        return get_namespace(per_group).take(per_group, self._group_of)

    def value(self, x: Any) -> Any:
        return self.lam * get_namespace(x).sum(self._group_norms(x))

    def prox(self, x: Any, step: Any) -> Any:
        xp = get_namespace(x)
        threshold = _check_step(step, self.n_groups) * self.lam
        norms = self._group_norms(x)
        kept = norms > threshold
        shrink = xp.where(kept, 1 - threshold / xp.where(kept, norms, 1.0), 0.0)
        return x * self._per_coordinate(shrink)

    def subdiff_distance(self, x: Any, grad: Any) -> Any:
        xp = get_namespace(x, grad)
        norms = self._group_norms(x)
        nonzero = norms > 0
        direction = x / self._per_coordinate(xp.where(nonzero, norms, 1.0))
        off = self._group_norms(grad + self.lam * direction)
        return xp.where(nonzero, off, xp.clip(self._group_norms(grad) - self.lam, min=0.0))

    def dual_norm(self, v: Any) -> float:
        return float(get_namespace(v).max(self._group_norms(v)))

    def to(self, backend: str, device: str | None = None, dtype: Any = None) -> "GroupL1":
        out = GroupL1(self.lam, self.groups)
        out._group_of = convert(self._group_of, backend, device)
        return out

    def __repr__(self) -> str:
        return f"GroupL1(lam={self.lam!r}, n_groups={self.n_groups})"


class Box(Penalty):
    """The indicator of ``lower <= x <= upper``: 0 inside, ``+inf`` outside.

    Parameters
    ----------
    lower, upper : float or array of shape (n,)
        Bounds; ``-inf``/``+inf`` allowed, no NaN, ``lower <= upper``, ``lower < inf`` and
        ``upper > -inf`` (a non-empty box). Arrays are kept on numpy until ``.to``.

    Notes
    -----
    ``prox`` is the projection (the step does not matter). ``subdiff_distance``: ``|grad_j|``
    strictly inside, ``max(-grad_j, 0)`` at a lower bound, ``max(grad_j, 0)`` at an upper
    one, 0 where ``lower_j = upper_j = x_j``, ``inf`` outside. Not a gauge: no dual norm,
    so no ``lambda_max`` and no duality gap.
    """

    def __init__(self, lower: Any = -math.inf, upper: Any = math.inf) -> None:
        self.lower, self.upper = self._bound("lower", lower), self._bound("upper", upper)
        lo, up = to_numpy(self.lower), to_numpy(self.upper)
        if np.any(lo > up):
            raise ValueError("lower must be <= upper everywhere")
        if np.any(lo == math.inf) or np.any(up == -math.inf):
            raise ValueError("the box is empty: lower must be < inf and upper > -inf")

    @staticmethod
    def _bound(name: str, bound: Any) -> Any:
        if isinstance(bound, (int, float, np.floating, np.integer)) and not isinstance(bound, bool):
            if math.isnan(bound):
                raise ValueError(f"{name} must not be NaN")
            return float(bound)
        array = to_numpy(bound).astype(np.float64) if backend_name(bound) == "numpy" else bound
        if array.ndim != 1:
            raise ValueError(f"{name} must be a number or a 1-D array, got shape {tuple(array.shape)}")
        if np.any(np.isnan(to_numpy(array))):
            raise ValueError(f"{name} must not contain NaN")
        return array

    def check_size(self, n: int) -> None:
        for name, bound in (("lower", self.lower), ("upper", self.upper)):
            if not isinstance(bound, float) and tuple(bound.shape) != (n,):
                raise ValueError(f"{name} must be a number or have shape ({n},), got shape {tuple(bound.shape)}")

    def value(self, x: Any) -> Any:
        xp = get_namespace(x)
        inside = xp.all((x >= self.lower) & (x <= self.upper))
        return xp.where(inside, xp.zeros((), dtype=x.dtype, device=device_of(x)), math.inf)

    def prox(self, x: Any, step: Any) -> Any:
        xp = get_namespace(x)
        _check_step(step, x.shape[0])
        return xp.minimum(xp.maximum(x, self.lower), self.upper)

    def subdiff_distance(self, x: Any, grad: Any) -> Any:
        xp = get_namespace(x, grad)
        at_lower, at_upper = x == self.lower, x == self.upper
        inside = xp.where(at_lower, xp.clip(-grad, min=0.0), xp.where(at_upper, xp.clip(grad, min=0.0), xp.abs(grad)))
        distance = xp.where(at_lower & at_upper, 0.0, inside)
        return xp.where((x < self.lower) | (x > self.upper), math.inf, distance)

    def to(self, backend: str, device: str | None = None, dtype: Any = None) -> "Box":
        return Box(convert(self.lower, backend, device, dtype), convert(self.upper, backend, device, dtype))

    def __repr__(self) -> str:
        return f"Box(lower={self.lower!r}, upper={self.upper!r})"

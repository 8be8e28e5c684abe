"""Block updates and the GS-q selection score for non-negative L1 problems.

The problem is ``F(x) = f(x) + lam * sum(x)`` on ``x >= 0`` with ``f`` smooth (least squares in
the BCD paper's problem A-l1). On the feasible set the penalty is linear, so a step on block
``b`` sees the smooth gradient shifted by ``lam``: ``c_b = g_b + lam`` with ``g_b = grad_b f(x)``.
Each update minimises (exactly or approximately) a model of ``F`` restricted to the block,

    m(d) = c_b^T d + d^T M d / 2   over   x_b + d >= 0,

with ``M = L_b I`` (projected gradient, the reference code's ``Lb-NN``) or ``M = H_b`` a block
bound or Hessian matrix (proximal Newton, ``qp-nn``; two-metric projection, ``TMP-NN``). For least
squares with ``H_b = A_b^T A_b / m`` the proximal Newton point is the exact block minimiser.

All functions take numpy arrays (array-likes are converted to float64), check their inputs before
any work and return new float64 arrays; the inputs are never modified. ``x_b`` must be feasible
(``x_b >= 0``): ``F`` is ``+inf`` elsewhere.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg

from optkit.validation import check_int, check_nonnegative, check_positive

__all__ = ["gsq_scores", "projected_gradient", "proximal_newton", "two_metric_projection"]

#: Relative asymmetry ``max|H - H^T| / max|H|`` accepted in a block matrix (rounding in ``A^T A``).
_SYMMETRY_RTOL = 1e-10

#: Armijo sufficient-decrease fraction of the two-metric projection line search (Bertsekas 1982).
_ARMIJO_FRACTION = 1e-4


# ----------------------------------------------------------------------------- input checks


def _vector(name: str, value: Any, size: int | None = None) -> np.ndarray:
    """``value`` as a finite 1-D float64 array (of length ``size`` when given); ``ValueError`` otherwise."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real array, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}")
    if size is not None and array.size != size:
        raise ValueError(f"{name} must have shape ({size},) like x_b, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf; expected finite values")
    return array


def _feasible_point(name: str, value: Any) -> np.ndarray:
    """``value`` as a finite, non-empty, non-negative 1-D float64 array."""
    x = _vector(name, value)
    if x.size == 0:
        raise ValueError(f"{name} must have at least one coordinate, got shape {x.shape}")
    if np.any(x < 0):
        raise ValueError(f"{name} must be non-negative (a feasible point of x >= 0); min is {x.min():.3g}")
    return x


def _spd_matrix(value: Any, size: int) -> np.ndarray:
    """``H_b`` as a symmetric positive definite (size, size) float64 array (exactly symmetrised)."""
    H = np.asarray(value)
    if H.dtype.kind not in "biuf":
        raise ValueError(f"H_b must be a real array, got dtype {H.dtype}")
    H = H.astype(np.float64)
    if H.shape != (size, size):
        raise ValueError(f"H_b must have shape ({size}, {size}) to match x_b, got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError("H_b contains NaN or inf; expected finite values")
    if np.abs(H - H.T).max() > _SYMMETRY_RTOL * np.abs(H).max():
        raise ValueError("H_b must be symmetric positive definite; it is not symmetric")
    H = (H + H.T) / 2
    try:
        np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        raise ValueError("H_b must be symmetric positive definite; its Cholesky factorisation failed") from None
    return H


# ----------------------------------------------------------------------------- selection


def gsq_scores(x: Any, g: Any, L: Any, lam: float) -> np.ndarray:
    """The GS-q score of every coordinate for ``F = f + lam * sum(x)`` on ``x >= 0``.

    The score of coordinate ``i`` is the decrease guaranteed by the exact minimiser of its
    one-dimensional model, ``-min_d {(g_i + lam) d + L_i d^2 / 2 : x_i + d >= 0}``:
    ``c_i^2 / (2 L_i)`` when the unconstrained step ``-c_i / L_i`` stays feasible
    (``c_i <= L_i x_i``), else ``x_i (c_i - L_i x_i / 2)`` (the step to zero), with
    ``c_i = g_i + lam``. It is 0 exactly where the coordinate is optimal (``x_i > 0, c_i = 0``,
    or ``x_i = 0, c_i >= 0``) and positive elsewhere.

    Parameters
    ----------
    x : array of shape (n,)
        The current point, ``x >= 0``.
    g : array of shape (n,)
        ``grad f(x)``, the gradient of the smooth part.
    L : float or array of shape (n,)
        Coordinate Lipschitz constants of ``grad f``, each ``> 0``.
    lam : float
        The L1 weight, ``>= 0``.

    Returns
    -------
    numpy.ndarray of shape (n,), float64
        The scores, ``>= 0``. The GS-q rule picks the coordinates (or block) of largest score.
    """
    x = _feasible_point("x", x)
    g = _vector("g", g, x.size)
    if isinstance(L, numbers.Real):
        L = check_positive("L", L)
    else:
        L = _vector("L", L, x.size)
        if not np.all(L > 0):
            raise ValueError("L must be positive (a scalar or one constant per coordinate)")
    lam = check_nonnegative("lam", lam)
    c = g + lam
    # The two closed forms are each non-negative in floating point: no cancellation to clip.
    interior = c <= L * x
    return np.where(interior, c * c / (2 * L), x * (c - L * x / 2))


# ----------------------------------------------------------------------------- updates


def projected_gradient(x_b: Any, g_b: Any, L_b: float, lam: float) -> np.ndarray:
    """Projected gradient step ``max(x_b - (g_b + lam) / L_b, 0)`` (the reference code's ``Lb-NN``).

    This is the exact minimiser of ``(g_b + lam)^T d + L_b ||d||^2 / 2`` over ``x_b + d >= 0``;
    ``x_b`` is a fixed point exactly when it is a stationary point of ``F`` over the block.

    Parameters
    ----------
    x_b : array of shape (k,)
        The block's current coordinates, ``>= 0``.
    g_b : array of shape (k,)
        ``grad_b f(x)``.
    L_b : float
        The block Lipschitz constant of ``grad_b f``, ``> 0``.
    lam : float
        The L1 weight, ``>= 0``.

    Returns
    -------
    numpy.ndarray of shape (k,), float64
        The new block coordinates.
    """
    x_b = _feasible_point("x_b", x_b)
    g_b = _vector("g_b", g_b, x_b.size)
    L_b = check_positive("L_b", L_b)
    lam = check_nonnegative("lam", lam)
    return np.maximum(x_b - (g_b + lam) / L_b, 0.0)


def _face_solution(H: np.ndarray, q: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The minimiser of ``y^T H y / 2 + q^T y`` with ``y = 0`` off ``free`` (a Cholesky solve)."""
    solution = np.zeros_like(q)
    index = np.flatnonzero(free)
    if index.size:
        solution[index] = scipy.linalg.cho_solve(scipy.linalg.cho_factor(H[np.ix_(index, index)]), -q[index])
    return solution


def _descend_to_face(H: np.ndarray, q: np.ndarray, y: np.ndarray, free: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Lawson-Hanson inner loop: from feasible ``y`` (``> 0`` on ``free``, 0 elsewhere) toward
    ``target`` (the minimiser on the face ``free``), dropping the coordinates that reach zero,
    until the face minimiser is feasible. Updates ``free`` in place; returns the new ``y``."""
    while True:
        blocking = np.flatnonzero(free & (target <= 0))
        if blocking.size == 0:
            return target
        ratios = y[blocking] / (y[blocking] - target[blocking])
        first = np.argmin(ratios)
        y = y + ratios[first] * (target - y)
        # the coordinate that limits the step leaves exactly, whatever the rounding of y
        y[blocking[first]] = 0.0
        free &= y > 0
        y[~free] = 0.0
        target = _face_solution(H, q, free)


def _nonnegative_qp(H: np.ndarray, q: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Exact minimiser of ``y^T H y / 2 + q^T y`` over ``y >= 0`` (``H`` SPD) by Lawson-Hanson.

    The active-set method of Lawson and Hanson's NNLS written on ``(H, q)``, warm-started on the
    support of ``start`` (a feasible point): each outer step frees the bound coordinate with the
    most negative gradient and the inner loop restores feasibility. It stops when every bound
    coordinate has gradient ``>= -tol_i`` with ``tol_i = 16 k eps (|q_i| + (|H| y)_i)``, the rounding
    level of the computed gradient, so the result satisfies the KKT conditions to ~1e-13 relative.
    """
    size = q.size
    absolute_H = np.abs(H)
    free = start > 0
    y = _descend_to_face(H, q, np.where(free, start, 0.0), free, _face_solution(H, q, free))
    # In exact arithmetic each outer step strictly lowers the objective (finite termination);
    # the cap only guards against rounding cycles on nearly singular faces.
    rejected = np.zeros(size, dtype=bool)
    for _ in range(10 * size + 10):
        gradient = H @ y + q
        tolerance = 16 * size * np.finfo(np.float64).eps * (np.abs(q) + absolute_H @ y)
        candidates = ~free & ~rejected & (gradient < -tolerance)
        if not candidates.any():
            return y
        entering = np.argmin(np.where(candidates, gradient, np.inf))
        free[entering] = True
        target = _face_solution(H, q, free)
        if target[entering] <= 0:
            # Exact arithmetic gives target[entering] > 0; a non-positive value is rounding on a
            # nearly singular face, so this coordinate is left bound until y moves.
            free[entering] = False
            rejected[entering] = True
            continue
        rejected[:] = False
        y = _descend_to_face(H, q, y, free, target)
    raise RuntimeError(
        f"the non-negative block QP (size {size}) did not terminate in {10 * size + 10} active-set steps; "
        f"H_b is too ill-conditioned (condition number {np.linalg.cond(H):.2g})"
    )


def proximal_newton(x_b: Any, g_b: Any, H_b: Any, lam: float) -> np.ndarray:
    """Proximal Newton block update: the exact minimiser of the block's quadratic model on ``x >= 0``.

    Solves ``min_d (g_b + lam)^T d + d^T H_b d / 2`` over ``x_b + d >= 0`` exactly, written in
    ``y = x_b + d`` as the non-negative QP ``min_{y >= 0} y^T H_b y / 2 + (g_b + lam - H_b x_b)^T y``,
    by a Lawson-Hanson active-set method warm-started on the support of ``x_b`` (no external
    solver). The result satisfies the QP's KKT conditions to rounding (~1e-13 relative to
    ``|q| + |H_b| y``): zero model gradient where ``y > 0``, non-negative where ``y = 0``; its zero
    coordinates are exact zeros. For least squares with ``H_b = A_b^T A_b / m`` it is the exact
    block minimiser of ``F`` (the paper's PN, the reference code's ``qp-nn``).

    Parameters
    ----------
    x_b : array of shape (k,)
        The block's current coordinates, ``>= 0``.
    g_b : array of shape (k,)
        ``grad_b f(x)``.
    H_b : array of shape (k, k)
        Symmetric positive definite block matrix (a Hessian or an upper bound on it).
    lam : float
        The L1 weight, ``>= 0``.

    Returns
    -------
    numpy.ndarray of shape (k,), float64
        The new block coordinates ``x_b + d``.

    Raises
    ------
    ValueError
        Bad shapes, non-finite entries, ``x_b`` not ``>= 0``, ``lam < 0``, or ``H_b`` not SPD.
    RuntimeError
        The active-set method did not terminate in ``10 k + 10`` steps (rounding cycles on a
        numerically singular ``H_b``).

    Notes
    -----
    Cost: one Cholesky factorisation of the free sub-block per active-set change, ``O(k^3)`` each;
    warm-started from a nearby iterate's support it typically needs a few.
    """
    x_b = _feasible_point("x_b", x_b)
    g_b = _vector("g_b", g_b, x_b.size)
    H_b = _spd_matrix(H_b, x_b.size)
    lam = check_nonnegative("lam", lam)
    return _nonnegative_qp(H_b, g_b + lam - H_b @ x_b, start=x_b)


def two_metric_projection(
    x_b: Any,
    g_b: Any,
    H_b: Any,
    lam: float,
    block_value: Callable[[np.ndarray], float],
    max_backtracks: int = 50,
    *,
    epsilon: float = np.inf,
) -> tuple[np.ndarray, int]:
    """Two-metric projection block update (Bertsekas 1982; the reference code's ``TMP-NN``).

    With ``c = g_b + lam`` and ``D = diag(H_b)``:

    1. epsilon-active set: ``w = ||x_b - max(x_b - c / D, 0)||_2`` (zero exactly at a stationary
       point), ``eps = min(epsilon, w)``, and ``I = {i : x_i <= eps and c_i > 0}``: the coordinates
       at or near the bound that the gradient pushes into it. The working set is ``W``, the rest:
       ``x_i > eps`` or ``c_i <= 0``.
    2. direction ``p``: Newton on ``W``, ``p_W = H_WW^{-1} c_W``; scaled gradient on ``I``,
       ``p_i = c_i / H_ii``.
    3. Armijo backtracking along the projection arc ``x(a) = max(x_b - a p, 0)``,
       ``a = 1, 1/2, 1/4, ...``: accept the first ``a`` with
       ``F(x(a)) <= F(x_b) - 1e-4 (a c_W^T p_W + c_I^T (x_b - x(a))_I)`` (both terms ``>= 0``).

    Because ``p`` does not mix ``I`` and ``W`` and ``I`` holds only coordinates with ``c_i > 0``,
    ``p`` is a descent direction along the arc unless ``x_b`` is stationary, and ``F`` never
    increases. After the optimal active set is identified (exact zeros there, the free
    coordinates above ``eps``) the full step is the Newton step on the free face: for least
    squares it lands on the proximal Newton point in one step.

    Parameters
    ----------
    x_b : array of shape (k,)
        The block's current coordinates, ``>= 0``.
    g_b : array of shape (k,)
        ``grad_b f(x)``.
    H_b : array of shape (k, k)
        Symmetric positive definite block matrix (the block Hessian, or an upper bound on it).
    lam : float
        The L1 weight, ``>= 0``.
    block_value : callable
        ``block_value(y)`` for ``y`` of shape (k,) returns ``F`` with ``x_b`` replaced by ``y`` and the
        other coordinates fixed, as a float. Only differences are used, so it may return ``F``
        minus any constant; returning the change from ``x_b`` (computed from the residual) avoids
        the cancellation in ``F(x(a)) - F(x_b)`` that otherwise rejects steps whose decrease is
        below the rounding of ``F``.
    max_backtracks : int, default 50
        Halvings of the step before giving up; ``>= 0``.
    epsilon : float, default inf
        Upper bound on the epsilon-active threshold. The default makes the threshold ``w``, which
        is in the units of ``x`` and so needs no scaling; a finite value caps it (Bertsekas's
        ``min(epsilon, w)``).

    Returns
    -------
    x_new : numpy.ndarray of shape (k,), float64
        The accepted point, or a copy of ``x_b`` when no step was taken.
    steps : int
        The number of trial steps evaluated to accept ``x_new`` (1: the full step was accepted).
        0 means ``x_b`` is returned unchanged: either it is stationary (``w = 0``, ``block_value``
        not called) or none of the ``max_backtracks + 1`` trial steps passed the Armijo test (a
        decrease below the rounding of ``block_value``, or a non-finite value).

    Raises
    ------
    ValueError
        Bad shapes, non-finite entries, ``x_b`` not ``>= 0``, ``lam < 0``, ``H_b`` not SPD,
        ``block_value`` not finite at ``x_b``, ``max_backtracks < 0``, ``epsilon <= 0``.
    TypeError
        ``block_value`` is not callable.
    """
    x_b = _feasible_point("x_b", x_b)
    g_b = _vector("g_b", g_b, x_b.size)
    H_b = _spd_matrix(H_b, x_b.size)
    lam = check_nonnegative("lam", lam)
    if not callable(block_value):
        raise TypeError(f"block_value must be a callable y -> F, got {type(block_value).__name__}")
    max_backtracks = check_int("max_backtracks", max_backtracks, 0)
    if isinstance(epsilon, bool) or not (isinstance(epsilon, numbers.Real) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive number (inf allowed), got {epsilon!r}")

    c = g_b + lam
    diagonal = np.diag(H_b)
    stationarity = float(np.linalg.norm(x_b - np.maximum(x_b - c / diagonal, 0.0)))
    if stationarity == 0.0:
        return x_b.copy(), 0
    near_bound = (x_b <= min(epsilon, stationarity)) & (c > 0)
    working = np.flatnonzero(~near_bound)
    direction = np.where(near_bound, c / diagonal, 0.0)
    if working.size:
        direction[working] = scipy.linalg.cho_solve(scipy.linalg.cho_factor(H_b[np.ix_(working, working)]), c[working])
    newton_decrease = float(c[working] @ direction[working])

    start_value = float(block_value(x_b))
    if not np.isfinite(start_value):
        raise ValueError(f"block_value(x_b) must be finite, got {start_value!r}")
    step = 1.0
    for trial in range(1, max_backtracks + 2):
        candidate = np.maximum(x_b - step * direction, 0.0)
        required = _ARMIJO_FRACTION * (step * newton_decrease + float(c[near_bound] @ (x_b - candidate)[near_bound]))
        # a NaN value fails this test too
        if float(block_value(candidate)) <= start_value - required:
            return candidate, trial
        step /= 2
    return x_b.copy(), 0

"""Selection rules of ``bcd``: which block to update next.

A rule is a :class:`SelectionRule` in :data:`SELECTIONS` with up to two functions of the
run state ``run``: ``fixed(run) -> int`` (the index of a block of ``run.blocks``, for fixed
partitions) and ``variable(run) -> index array`` (any ``run.block_size`` coordinates, for
variable blocks). A rule without one of them is refused with that partition at
``BCD.validate``.

The run state read by the rules (see :class:`solvers.bcd.bcd.RunState`): ``objective``
(``x``, the full gradient ``g``, curvature methods), ``penalty``, ``lipschitz`` (``L_i``),
``blocks``, ``block_of`` (block index of every coordinate), ``block_lipschitz`` (``L_b``
per fixed block), ``block_size``, ``iteration``, ``rng``, ``cache`` (a dict for factors).

Greedy rules with a penalty. With ``lam > 0`` (or ``x >= 0``) the greedy rules score the
proximal-gradient step instead of the gradient (the GS-r rule), through
:func:`greedy_gradient`: ``G_i = L_i (x_i - prox_{g/L_i}(x_i - g_i / L_i))``. It equals
``g_i`` without a penalty and is 0 exactly at coordinates that satisfy their optimality
condition, so a zero coordinate at its optimum is never chosen.

Scores (``G`` as above, ``L_b = lambda_max(H_b)``):

======== =================================== =================================================
rule     fixed blocks: argmax over blocks of variable blocks: the ``tau`` largest
======== =================================== =================================================
gs       ``||G_b||_2^2`` (the paper; the     ``|G_i|``
         reference code uses ``||G_b||_1``)
gsl      ``||G_b||^2 / L_b`` (the paper)     ``|G_i| / sqrt(sum_j |H_ij|)`` (the paper's VB
                                             GSL, the reference code's ``GSDHb``)
gsl-code ``sum |G_b| / sqrt(L_b)`` (the      (none: the code has no VB version)
         reference code's FB GSL)
gsd      ``sum_b |G_i| / sqrt(L_i)``         ``|G_i| / sqrt(L_i)``
gsq      ``G_b^T H_b^+ G_b`` (every         iterative hard thresholding, <= 10 steps
         ``H_b^+`` formed once)            (:func:`iht_block`)
======== =================================== =================================================

Two more rules:

* ``gs-q`` (non-negative L1 only): the GS-q rule, the decrease of ``F`` guaranteed by the
  exact step on each coordinate's one-dimensional model with ``L_i``
  (:func:`~._nonneg_l1.gsq_scores`), summed per fixed block or the ``tau`` largest;
* ``working-set`` (variable blocks): every non-zero coordinate plus the zero ones that most
  violate their optimality condition (the subdifferential distance, the working sets of
  celer and skglm), ``max(tau, 2 nnz(x))`` coordinates in all; with the ``prox-newton``
  update it is the fast configuration for the Lasso and L1-logistic.

``cyclic`` goes through the blocks in order (variable: windows of ``tau`` consecutive
coordinates, wrapping around), ``random`` draws uniformly, ``lipschitz`` draws with
probability proportional to ``L_b`` (variable: ``tau`` coordinates without replacement,
``p ~ L_i``). Extension point: one entry in :data:`SELECTIONS`; :func:`block_argmax` and
:func:`top_coordinates` turn per-coordinate scores into either kind of choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._nonneg_l1 import gsq_scores
from ._objectives import psd_solver

__all__ = [
    "IHT_MAX_STEPS",
    "SELECTIONS",
    "WORKING_SET_MAX",
    "SelectionRule",
    "block_argmax",
    "greedy_gradient",
    "iht_block",
    "top_coordinates",
]

#: iterative hard thresholding steps of the variable-block GSQ rule (the reference's limit)
IHT_MAX_STEPS = 10
#: the largest working set: its dense block Hessian then takes 128 MiB
WORKING_SET_MAX = 4096


@dataclass(frozen=True)
class SelectionRule:
    """One selection rule: ``fixed(run) -> block index`` and/or ``variable(run) -> coordinates``,
    and the penalty kinds it handles (checked by ``BCD.check``)."""

    fixed: Callable[[Any], int] | None = None
    variable: Callable[[Any], np.ndarray] | None = None
    penalties: frozenset = frozenset({"none", "l1", "l1-nonneg"})


def greedy_gradient(run: Any) -> np.ndarray:
    """``G``: the gradient, or with a penalty the scaled proximal-gradient step (module docstring)."""
    x, g = run.objective.x, run.objective.g
    if run.penalty.smooth:
        return g
    L = run.lipschitz
    return L * (x - run.penalty.prox(x - g / L, 1.0 / L))


def block_argmax(run: Any, coordinate_scores: np.ndarray, scale: np.ndarray | None = None) -> int:
    """The fixed block with the largest sum of ``coordinate_scores`` (times ``scale`` per block)."""
    sums = np.bincount(run.block_of, weights=coordinate_scores, minlength=len(run.blocks))
    return int(np.argmax(sums if scale is None else sums * scale))


def top_coordinates(scores: np.ndarray, tau: int) -> np.ndarray:
    """The ``tau`` coordinates with the largest ``scores``, sorted by index."""
    if tau >= scores.shape[0]:
        return np.arange(scores.shape[0])
    return np.sort(np.argpartition(-scores, tau - 1)[:tau])


def _cyclic_fixed(run: Any) -> int:
    return run.iteration % len(run.blocks)


def _cyclic_variable(run: Any) -> np.ndarray:
    n = run.objective.n
    return np.sort((run.iteration * run.block_size + np.arange(run.block_size)) % n)


def _random_fixed(run: Any) -> int:
    return int(run.rng.integers(len(run.blocks)))


def _random_variable(run: Any) -> np.ndarray:
    return np.sort(run.rng.choice(run.objective.n, size=run.block_size, replace=False))


def _lipschitz_fixed(run: Any) -> int:
    return int(run.rng.choice(len(run.blocks), p=run.block_lipschitz / run.block_lipschitz.sum()))


def _lipschitz_variable(run: Any) -> np.ndarray:
    p = run.lipschitz / run.lipschitz.sum()
    return np.sort(run.rng.choice(run.objective.n, size=run.block_size, replace=False, p=p))


def _gs_fixed(run: Any) -> int:
    return block_argmax(run, greedy_gradient(run) ** 2)


def _gs_variable(run: Any) -> np.ndarray:
    return top_coordinates(np.abs(greedy_gradient(run)), run.block_size)


def _gsl_fixed(run: Any) -> int:
    return block_argmax(run, greedy_gradient(run) ** 2, 1.0 / run.block_lipschitz)


def _gsl_variable(run: Any) -> np.ndarray:
    if "abs_row_sums" not in run.cache:
        # sum_j |H_ij| >= H_ii = L_i: the floor only acts on zero columns (0 / 0 otherwise)
        run.cache["abs_row_sums"] = np.maximum(run.objective.bound_abs_row_sums(), run.lipschitz)
    return top_coordinates(np.abs(greedy_gradient(run)) / np.sqrt(run.cache["abs_row_sums"]), run.block_size)


def _gsl_code_fixed(run: Any) -> int:
    return block_argmax(run, np.abs(greedy_gradient(run)), 1.0 / np.sqrt(run.block_lipschitz))


def _gsd_fixed(run: Any) -> int:
    return block_argmax(run, np.abs(greedy_gradient(run)) / np.sqrt(run.lipschitz))


def _gsd_variable(run: Any) -> np.ndarray:
    return top_coordinates(np.abs(greedy_gradient(run)) / np.sqrt(run.lipschitz), run.block_size)


def _gsq_tables(run: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every fixed block's ``H_b^+`` stacked (nb, tau, tau) with the blocks' indices (nb, tau).

    Formed once (kept in ``run.cache``); a short last block is padded with index ``n`` (a
    zero appended to ``G``) and zero rows, so one ``einsum`` scores all blocks.
    """
    if "gsq_tables" not in run.cache:
        n, tau = run.objective.n, max(b.shape[0] for b in run.blocks)
        index = np.full((len(run.blocks), tau), n, dtype=np.int64)
        inverses = np.zeros((len(run.blocks), tau, tau))
        for k, block in enumerate(run.blocks):
            size = block.shape[0]
            index[k, :size] = block
            inverses[k, :size, :size] = psd_solver(run.objective.bound_matrix(block))(np.eye(size))
        run.cache["gsq_tables"] = (index, inverses)
    return run.cache["gsq_tables"]


def _gsq_fixed(run: Any) -> int:
    index, inverses = _gsq_tables(run)
    G = np.append(greedy_gradient(run), 0.0)[index]
    return int(np.argmax(np.einsum("ki,kij,kj->k", G, inverses, G)))


def iht_block(run: Any) -> np.ndarray:
    """Variable-block GSQ: iterative hard thresholding on ``min_{||d||_0 <= tau} G^T d + d^T H d / 2``.

    ``d <- top_tau(d - mu (G + H d))`` with ``mu = 1 / lambda_max(H)`` from ``d = 0`` (so the
    first step is the GS choice), at most :data:`IHT_MAX_STEPS` steps, stopping when the
    support repeats. Each step is one product with the full bound matrix. The block is the
    support, completed with the largest ``|G_i|`` when it has fewer than ``tau`` entries.
    """
    tau = run.block_size
    G = greedy_gradient(run)
    mu = 1.0 / run.objective.bound_norm()
    d = np.zeros_like(G)
    support = np.empty(0, dtype=np.int64)
    for _ in range(IHT_MAX_STEPS):
        step = d - mu * (G + run.objective.bound_matvec(d))
        new_support = top_coordinates(np.abs(step), tau)
        d = np.zeros_like(G)
        d[new_support] = step[new_support]
        if np.array_equal(new_support, support):
            break
        support = new_support
    support = support[d[support] != 0]
    if support.shape[0] < tau:
        rest = np.abs(G)
        rest[support] = -1.0
        support = np.union1d(support, top_coordinates(rest, tau - support.shape[0]))
    return support


def _gsq_nonneg_scores(run: Any) -> np.ndarray:
    return gsq_scores(run.objective.x, run.objective.g, run.lipschitz, run.penalty.lam)


def _gs_q_fixed(run: Any) -> int:
    return block_argmax(run, _gsq_nonneg_scores(run))


def _gs_q_variable(run: Any) -> np.ndarray:
    return top_coordinates(_gsq_nonneg_scores(run), run.block_size)


def working_set(run: Any) -> np.ndarray:
    """The support of ``x`` and the largest optimality violations at zero, ``max(tau, 2 nnz(x))`` in all
    (at most :data:`WORKING_SET_MAX`: the update forms the block's dense Hessian).

    A zero coordinate that is optimal (subdifferential distance 0) is never chosen; when every
    zero coordinate is optimal the block is the support alone (or, at ``x = 0``, the largest
    violation). When the cap leaves no room beside the support, the block is the coordinates
    of largest violation, support or not, so that a violating zero still enters.
    """
    x = run.objective.x
    distance = run.penalty.subdiff_distance(x, run.objective.g)
    support = int(np.count_nonzero(x))
    size = min(max(run.block_size, 2 * support), WORKING_SET_MAX, x.shape[0])
    score = np.where(x != 0, np.inf, distance) if support < size else distance
    chosen = top_coordinates(score, size)
    kept = chosen[score[chosen] > 0]
    return kept if kept.shape[0] else chosen[[int(np.argmax(score[chosen]))]]


#: name -> rule; unknown names are refused by ``BCD.validate`` with this list.
SELECTIONS: dict[str, SelectionRule] = {
    "cyclic": SelectionRule(_cyclic_fixed, _cyclic_variable),
    "random": SelectionRule(_random_fixed, _random_variable),
    "lipschitz": SelectionRule(_lipschitz_fixed, _lipschitz_variable),
    "gs": SelectionRule(_gs_fixed, _gs_variable),
    "gsl": SelectionRule(_gsl_fixed, _gsl_variable),
    "gsl-code": SelectionRule(_gsl_code_fixed, None),
    "gsd": SelectionRule(_gsd_fixed, _gsd_variable),
    "gsq": SelectionRule(_gsq_fixed, iht_block),
    "gs-q": SelectionRule(_gs_q_fixed, _gs_q_variable, penalties=frozenset({"l1-nonneg"})),
    "working-set": SelectionRule(None, working_set),
}

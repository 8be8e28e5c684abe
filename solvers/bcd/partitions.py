"""Partition rules of ``bcd``: how the coordinates are grouped into blocks.

A rule is a :class:`PartitionRule` in :data:`PARTITIONS`, one of three kinds:

* ``"fixed"``: ``build(data) -> list of index arrays`` once, at ``init``; the selection rule
  then picks one of these blocks each iteration (``"order"``, ``"sort"``, ``"avg"``).
* ``"variable"``: no partition; the selection rule picks any ``block_size`` coordinates
  each iteration (``"variable"``).
* ``"dynamic"``: the rule itself grows the block every iteration,
  ``choose(data, state) -> index array`` (the forest rules: a block whose coordinates induce
  a forest in the graph of a sparse quadratic, grown in the order of a greedy score or at
  random); no selection rule is used.

The forest rules (for a :class:`~optkit.problem.LinearSystemProblem` with a sparse ``Q``), all
with the exact update solved by Gaussian belief propagation in time linear in the block
(:func:`~._gabp.solve_forest`):

============= =============================================================================
rule          blocks
============= =============================================================================
red-black     fixed: the colour classes of a greedy colouring (2 on a lattice), each an
              independent set (``Q_bb`` diagonal)
forest-cover  fixed: maximal forests grown in node order until every node is covered (2 on
              the 50 x 50 lattice, 4 on the two-moons graph)
forest-gs     dynamic: a maximal forest grown in the order of ``|g_i|`` (the paper's greedy
              tree: as large as the graph allows, so ``block_size`` does not apply)
forest-gsl    dynamic: the same in the order of ``g_i^2 / L_i`` (for single coordinates the
              GSD order ``|g_i| / sqrt(L_i)`` is the same order, so it has no rule of its own)
forest-random dynamic: the same in a random order
============= =============================================================================

Extension point: add one entry to :data:`PARTITIONS`. A rule with ``needs_quadratic`` is
refused unless the problem is a ``LinearSystemProblem`` with a sparse matrix ``Q``;
``block_solver(Q, rhs, block) -> Q_bb^{-1} rhs``, when set, replaces the dense block solve of
the ``"exact"`` update on the blocks it makes (Gaussian belief propagation on forest blocks)
and needs ``needs_quadratic=True`` (it is handed that ``Q``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PARTITIONS", "PartitionData", "PartitionRule", "avg_blocks", "order_blocks", "sort_blocks"]


@dataclass(frozen=True)
class PartitionData:
    """What a partition rule may read.

    Attributes
    ----------
    lipschitz : ndarray (n,)
        Coordinate Lipschitz constants ``L_i``.
    block_size : int
        ``tau``, the largest block.
    matrix : scipy sparse or ndarray or None
        ``Q`` of a quadratic problem (``None`` otherwise).
    rng : numpy.random.Generator
        The run's seeded generator.
    graph : Graph or None
        ``Q``'s adjacency (:func:`~._forest.graph_of`), formed once for the forest rules.
    """

    lipschitz: np.ndarray
    block_size: int
    matrix: Any = None
    rng: Any = None
    graph: Any = None


@dataclass(frozen=True)
class PartitionRule:
    """One partition rule (see the module docstring for ``kind``)."""

    kind: str
    build: Callable[[PartitionData], list[np.ndarray]] | None = None
    choose: Callable[[PartitionData, Any], np.ndarray] | None = None
    needs_quadratic: bool = False
    block_solver: Callable[[Any, np.ndarray, np.ndarray], np.ndarray] | None = None


def _chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
    return [np.sort(order[start : start + size]) for start in range(0, order.shape[0], size)]


def order_blocks(data: PartitionData) -> list[np.ndarray]:
    """Contiguous blocks ``{0..tau-1}, {tau..2tau-1}, ...`` (the last one may be smaller)."""
    return _chunks(np.arange(data.lipschitz.shape[0]), data.block_size)


def sort_blocks(data: PartitionData) -> list[np.ndarray]:
    """Blocks of coordinates with similar ``L_i``: contiguous chunks of the order of decreasing ``L_i``."""
    return _chunks(np.argsort(-data.lipschitz, kind="stable"), data.block_size)


def avg_blocks(data: PartitionData) -> list[np.ndarray]:
    """Blocks that mix large and small ``L_i`` so their averages are close (the reference's ``Avg``).

    The coordinates sorted by decreasing ``L_i`` are dealt out round-robin over the
    ``ceil(n / tau)`` blocks: block ``k`` gets ranks ``k, k + nb, k + 2 nb, ...``.
    """
    n = data.lipschitz.shape[0]
    order = np.argsort(-data.lipschitz, kind="stable")
    n_blocks = -(-n // data.block_size)
    return [np.sort(order[k::n_blocks]) for k in range(n_blocks)]


# the forest and belief-propagation modules are numba kernels: imported at the first solve, not
# when the solver registry is


def _red_black(data: PartitionData) -> list[np.ndarray]:
    from ._forest import red_black_blocks

    return red_black_blocks(data.graph)


def _forest_cover(data: PartitionData) -> list[np.ndarray]:
    from ._forest import forest_partition

    return forest_partition(data.graph)


def _scored_forest(score: Callable[[Any], np.ndarray]) -> Callable[[PartitionData, Any], np.ndarray]:
    def choose(data: PartitionData, run: Any) -> np.ndarray:
        from ._forest import greedy_forest

        return greedy_forest(data.graph, score(run))

    return choose


def _random_forest(data: PartitionData, run: Any) -> np.ndarray:
    from ._forest import random_forest

    return random_forest(data.graph, data.rng)


def _belief_propagation(Q: Any, rhs: np.ndarray, block: np.ndarray) -> np.ndarray:
    from ._gabp import solve_forest

    return solve_forest(Q, rhs, block)


def _forest_rule(kind: str, **rule: Any) -> PartitionRule:
    return PartitionRule(kind, needs_quadratic=True, block_solver=_belief_propagation, **rule)


#: name -> rule; unknown names are refused by ``BCD.validate`` with this list.
PARTITIONS: dict[str, PartitionRule] = {
    "order": PartitionRule("fixed", build=order_blocks),
    "sort": PartitionRule("fixed", build=sort_blocks),
    "avg": PartitionRule("fixed", build=avg_blocks),
    "variable": PartitionRule("variable"),
    "red-black": _forest_rule("fixed", build=_red_black),
    "forest-cover": _forest_rule("fixed", build=_forest_cover),
    "forest-gs": _forest_rule("dynamic", choose=_scored_forest(lambda run: np.abs(run.objective.g))),
    "forest-gsl": _forest_rule("dynamic", choose=_scored_forest(lambda run: run.objective.g**2 / run.lipschitz)),
    "forest-random": _forest_rule("dynamic", choose=_random_forest),
}

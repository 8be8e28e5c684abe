"""Solver ``alm-newton``: the exact augmented Lagrangian Newton method with exact or MINRES
KKT solves.

The same outer iteration as ``alm-sketch``
(:class:`~solvers.constrained._alm_merit.AugmentedLagrangianNewton`), with the Newton system
solved by a direct factorization (``kkt_solver="direct"``: LAPACK for dense systems, SuperLU
for sparse ones) or by MINRES (:func:`optkit.krylov.minres`) to the same adaptive accuracy.
It isolates what sketching buys: any difference in iterations or time between the two
solvers comes from the inner solve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from optkit.krylov import minres
from optkit.registry import register_solver
from optkit.result import Status
from optkit.validation import check_choice

from ._alm_merit import AugmentedLagrangianNewton, KKTSolve, KKTSystem, _State

__all__ = ["AlmNewton"]


@register_solver("alm-newton")
@dataclass(frozen=True, kw_only=True)
class AlmNewton(AugmentedLagrangianNewton):
    """Exact augmented Lagrangian Newton; KKT systems solved directly or by MINRES.

    Options (besides those of :class:`AugmentedLagrangianNewton`)
    ----------------------------------------------------------------
    kkt_solver : {"direct", "minres"}
        ``"direct"`` solves exactly (the accuracy condition always holds); ``"minres"`` runs
        MINRES to the adaptive accuracy, warm-started when it is tightened.

    Counters: ``inner_iter`` (MINRES iterations, or one per direct solve), ``hessian_mods``,
    ``penalty_updates``, and the problem's evaluation counts.
    """

    kkt_solver: str = "direct"

    def validate(self) -> None:
        super().validate()
        check_choice("kkt_solver", self.kkt_solver, ("direct", "minres"))

    def solve_kkt(self, system: KKTSystem, b: np.ndarray, rtol: float, state: _State, z: np.ndarray | None) -> KKTSolve:
        K = system.matrix
        if self.kkt_solver == "minres":
            past_deadline = None if state.deadline is None else (lambda _: time.perf_counter() >= state.deadline)
            result = minres(K, b, z, rtol=rtol, max_iter=10 * b.shape[0], callback=past_deadline)
            timed_out = result.status is Status.USER_STOPPED
            return KKTSolve(np.asarray(result.x), result.nit, result.success, result.message, timed_out)
        if z is not None:  # an exact solve needs no refinement
            return KKTSolve(z, 0, True)
        if sp.issparse(K):
            try:
                return KKTSolve(spla.splu(sp.csc_array(K)).solve(b), 1, True)
            except RuntimeError as err:  # exactly singular
                return KKTSolve(np.full_like(b, np.nan), 1, False, str(err))
        try:
            return KKTSolve(sla.solve(K, b, assume_a="sym"), 1, True)
        except sla.LinAlgError as err:
            return KKTSolve(np.full_like(b, np.nan), 1, False, str(err))

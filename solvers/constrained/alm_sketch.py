"""Solver ``alm-sketch``: exact augmented Lagrangian Newton with preconditioned or sketched Newton solves.

The method of Hong, Na, Mahoney & Kolar, "Constrained Optimization via Exact Augmented
Lagrangian and Randomized Iterative Sketching" (ICML 2023), for
:class:`~optkit.constrained_problem.EqualityConstrainedProblem`. The outer iteration (merit
function, penalty adaptation, Hessian modification, regularised steps, recovery, line search)
is :class:`~solvers.constrained._alm_merit.AugmentedLagrangianNewton`; each Newton (KKT) system
is solved to the paper's adaptive accuracy ``theta_k * delta`` by one of two solvers:

- ``inner="preconditioned"`` (default): MINRES with the augmented-Lagrangian block
  preconditioner :class:`optkit.saddle_point.SaddlePointSolver`, whose ``B + rho J^T J`` is
  applied by a factorisation or by a randomized Nystrom approximation (``preconditioner``).
  Its rate does not depend on the KKT matrix's conditioning: a handful of iterations per solve.
- ``inner="sketch-and-project"``: the paper's solver, :func:`optkit.sketch.sketch_and_project`
  with sampled equations (randomized Kaczmarz, the paper's RK), Gaussian sketches (the paper's
  GV) or CountSketches, warm-started when the accuracy is tightened. It converges at a rate set
  by the *scaled* condition number ``||K||_F^2 / sigma_min(K)^2``: when a solve does not reach its
  accuracy within its budget, ``adaptive_block=True`` doubles the block size (up to the system
  size, where one step is an exact projection); with ``adaptive_block=False`` the inexact
  direction is used as it is, as the reference code does after 1e5 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from optkit.registry import register_solver
from optkit.result import Status
from optkit.saddle_point import PRECONDITIONERS, SaddlePointSolver
from optkit.sketch import SKETCHES, SketchProjector
from optkit.validation import check_choice, check_int

from ._alm_merit import AugmentedLagrangianNewton, KKTSolve, KKTSystem, _State

__all__ = ["AlmSketch"]


@register_solver("alm-sketch")
@dataclass(frozen=True, kw_only=True)
class AlmSketch(AugmentedLagrangianNewton):
    """Exact augmented Lagrangian Newton; KKT systems by preconditioned MINRES or sketch-and-project.

    Options (besides those of :class:`AugmentedLagrangianNewton`)
    ----------------------------------------------------------------
    inner : {"preconditioned", "sketch-and-project"}
        The Newton-system solver (module docstring); ``"sketch-and-project"`` with
        ``max_recoveries=0`` and the other defaults is the paper's configuration.
    preconditioner : {"auto", "factor", "nystrom"}
        How ``inner="preconditioned"`` applies ``(B + rho J^T J)^{-1}``: a Cholesky or SuperLU
        factorisation, or the randomized Nystrom preconditioner; ``"auto"`` factors sparse
        systems and dense ones up to n = 4000 (:class:`optkit.saddle_point.SaddlePointSolver`).
    sketch : {"gaussian", "row", "count"}
        Gaussian sketches (the paper's GV; default), sampled KKT equations (Kaczmarz, the
        paper's RK) or CountSketch blocks. With ``"row"`` and uniform sampling, MWRIGHT of
        ``cutest-eq`` ends at an infeasible stationary point of the merit function; Gaussian
        sketches and norm-weighted rows solve all 41 (docs/benchmarks.md).
    block_size : int
        Rows per sketch (default 1, the paper's one-dimensional sketches).
    sampling : {"uniform", "row_norm"}
        Equation sampling for ``sketch="row"``: uniform (the reference code) or by squared row norm.
    max_sketch_iter, max_sweeps : int
        A solve at one block size stops after ``min(max_sketch_iter, max_sweeps * N)``
        sketched equations (``N`` the size of the KKT system), i.e. that number divided by
        the block size in steps; then the block size is doubled, or the direction is taken as
        it is (the reference code: 1e5 steps, no sweep limit).
    adaptive_block : bool
        Double the block size when a solve runs out of steps (default True).
    seed : int
        Seed of the sketches, and of the preconditioner's norm estimates and Nystrom sketches
        (reference: 2023).

    ``sketch``, ``block_size``, ``sampling``, ``max_sketch_iter``, ``max_sweeps`` and
    ``adaptive_block`` apply to ``inner="sketch-and-project"`` only.

    Counters: ``inner_iter`` (MINRES iterations or sketch steps), ``max_block_size`` (the largest
    sketch block used), ``hessian_mods``, ``penalty_updates``, ``primal_steps``,
    ``restoration_steps``, ``recoveries``, and the problem's evaluation counts.
    Accepts :class:`~optkit.constrained_problem.EqualityConstrainedProblem` on numpy with
    ``lag_hess``; dense or scipy-sparse Jacobians and Hessians.
    """

    inner: str = "preconditioned"
    preconditioner: str = "auto"
    sketch: str = "gaussian"
    block_size: int = 1
    sampling: str = "uniform"
    max_sketch_iter: int = 100_000
    max_sweeps: int = 1000
    adaptive_block: bool = True
    seed: int = 2023

    def validate(self) -> None:
        super().validate()
        check_choice("inner", self.inner, ("preconditioned", "sketch-and-project"))
        check_choice("preconditioner", self.preconditioner, PRECONDITIONERS)
        check_choice("sketch", self.sketch, SKETCHES)
        check_choice("sampling", self.sampling, ("uniform", "row_norm"))
        check_int("block_size", self.block_size, 1)
        check_int("max_sketch_iter", self.max_sketch_iter, 1)
        check_int("max_sweeps", self.max_sweeps, 1)
        check_int("seed", self.seed, 0)
        if not isinstance(self.adaptive_block, bool):
            raise TypeError(f"adaptive_block must be a bool, got {self.adaptive_block!r}")

    def init(self, problem, x0) -> _State:
        state = super().init(problem, x0)
        state.memory.update(rng=np.random.default_rng(self.seed), block_size=self.block_size, max_block=self.block_size)
        return state

    def solve_kkt(self, system: KKTSystem, b: np.ndarray, rtol: float, state: _State, z: np.ndarray | None) -> KKTSolve:
        keep, scratch = state.memory, state.scratch
        if self.inner == "preconditioned":
            if "saddle" not in scratch:
                scratch["saddle"] = SaddlePointSolver(
                    system.B, system.J, preconditioner=self.preconditioner, rng=keep["rng"]
                )
            result = scratch["saddle"].solve(b, rtol=rtol, x0=z, deadline=state.deadline)
            return KKTSolve(result.z, result.nit, result.success, result.message, result.status is Status.TIME_LIMIT)
        K = system.matrix
        if "projector" not in scratch:
            scratch["projector"] = SketchProjector(K, b, sketch=self.sketch, sampling=self.sampling, rng=keep["rng"])
        N = b.shape[0]
        x = np.zeros(N) if z is None else z.copy()
        steps = 0
        while True:
            budget = min(self.max_sketch_iter, self.max_sweeps * N) // keep["block_size"]
            result = scratch["projector"].run(
                x, rtol, 0.0, max(1, budget), block_size=keep["block_size"], deadline=state.deadline
            )
            steps += result.nit
            x = result.x
            if result.status is not Status.MAX_ITER or not self.adaptive_block or keep["block_size"] >= N:
                break
            keep["block_size"] = min(2 * keep["block_size"], N)
            keep["max_block"] = max(keep["max_block"], keep["block_size"])
        return KKTSolve(x, steps, result.status.success, result.status.message, result.status is Status.TIME_LIMIT)

    def postprocess(self, problem, state: _State, status) -> dict[str, Any]:
        out = super().postprocess(problem, state, status)
        out["counters"]["max_block_size"] = state.memory["max_block"]
        return out

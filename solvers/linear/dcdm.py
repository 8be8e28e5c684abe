"""Solver ``dcdm``: the deep conjugate direction method (Kaneda et al., ICML 2023).

A conjugate direction method whose search directions come from a network: each iteration maps
the normalised residual through the network ``f`` (:mod:`solvers.linear._dcdm_network`), makes
the result A-orthogonal to the last directions (the paper: two; here 40 by default, measured),
steps to the minimum of the energy along it, and recomputes the true residual::

    q = f(r / ||r||)
    q <- q - sum_i p_i (qᵀ A p_i) / (p_iᵀ A p_i)      (the last ``directions`` p_i)
    x <- x + q (qᵀ r) / (qᵀ A q)
    r <- b - A x

``f`` is nonlinear, so this is not PCG: there is no short recurrence, only the local
orthogonalisation, and the step is exact along each direction. With ``f`` the exact inverse
of ``A`` it converges in one step; with the identity it is steepest descent made A-orthogonal
to the previous steps, which is CG.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from optkit.backend import convert, synchronize, to_numpy
from optkit.lanczos import lanczos
from optkit.problem import LinearSystemProblem, Problem
from optkit.registry import register_solver
from optkit.result import Status
from optkit.solver import IterativeSolver
from optkit.validation import check_choice, check_int

__all__ = ["DCDM"]


@dataclass(frozen=True)
class _Direction:
    """A past search direction ``p`` with ``A p`` and ``pᵀ A p``."""

    p: Any
    Ap: Any
    curvature: float


@dataclass(frozen=True)
class _Run:
    """The iterate, its true residual and the kept directions, with the run's fixed parts
    (network, grid map, nullspace basis) and counts."""

    x: Any
    r: Any
    r_norm: float
    b_norm: float
    directions: tuple[_Direction, ...]
    network: Any
    grid_map: Any
    nullspace: Any
    device: Any
    dtype: Any
    matvecs: int = 0
    network_calls: int = 0
    fallbacks: int = 0
    status: Status | None = None
    message: str = ""
    setup: dict = field(default_factory=dict)


#: Lanczos steps of the setup's estimate of the largest eigenvalue.
_LANCZOS_STEPS = 20
#: A network step must lower the energy by this share of steepest descent's least decrease.
_LEAST_SHARE = 0.01


def _dot(u: Any, v: Any) -> float:
    return float((u * v).sum())


def _largest_eigenvalue_bound(A: Any, steps: int) -> float:
    """The largest Ritz value of ``steps`` Lanczos steps plus its residual norm: an estimate
    from above of ``λ_max(A)`` (the extreme Ritz value converges first; an eigenvalue lies
    within the residual of it)."""
    decomposition = lanczos(A, steps)
    theta, S = decomposition.ritz()
    return float(theta[-1] + abs(decomposition.beta[-1] * S[-1, -1]))


@register_solver("dcdm")
@dataclass(frozen=True, kw_only=True)
class DCDM(IterativeSolver):
    """Deep conjugate direction method for a symmetric positive (semi)definite ``A x = b`` on a 3-D grid.

    Options
    -------
    tol : float
        Relative residual: stops when ``||b - A x|| < tol * ||b||``, the true residual (the
        same test as every linear solver here).
    max_iter : int
        Iterations (one network evaluation and two products with ``A`` each, a third on a
        fallback). ``counters["matvec"]`` also counts the setup's 21 products.
    time_limit : float or None
        Seconds, the model's loading and placement included.
    model : None, str, path or torch.nn.Module
        ``None``: the model shipped in ``solvers/linear/dcdm_weights`` (trained on two 32³
        pressure systems; the command and seed are in the file). A path: a model written by
        :func:`solvers.linear._dcdm_network.save_model`, read with ``weights_only=True``. A
        module: any map of ``(batch, 1, n0, n1, n2)`` tensors to tensors of that shape, used
        as given (its parameters must be on ``device``).
    device : str or None
        Where the network runs; default the problem's device (``"cpu"`` for numpy problems).
    network_dtype : {"float32", "float64"}
        The network's precision; the iterate keeps the problem's dtype (float64 in, float64 out).
    coarse_levels : int or None
        Iterations cycle through the network applied on the grid itself and on grids
        ``2, 4, ... 2**coarse_levels`` times coarser (:func:`~solvers.linear._dcdm_network.coarse_direction`:
        the residual averaged over blocks, the direction interpolated back). ``None``: as many
        levels as halve the grid's largest side down to the model's training grid (from its
        file's record; 0 for a module given directly). Without them a model trained on 32³
        took 535 iterations on a 64³ system (CG: 398); with one level, 75.
    directions : int
        Past directions each new one is made A-orthogonal to, kept with their products with
        ``A`` (``2 * directions`` vectors of memory). The paper keeps 2; with the shipped model
        that stalls (32³ spheres: no convergence in 1,000 iterations), 20 takes 94 iterations
        and 40 takes 46, against CG's 198: a nonlinear ``f`` gives no short recurrence, and
        the longer window is a truncated flexible conjugate direction method.

    The problem must hold its grid in ``metadata["grid"]`` (a 3-tuple) and, when its unknowns
    are not every cell in C order, their cells in ``metadata["cells"]``
    (:mod:`problems.pressure`). An orthonormal ``metadata["nullspace"]`` (pure-Neumann
    systems) is projected out of every direction.

    A network direction that is not finite, or whose exact step lowers the energy
    ``xᵀAx/2 - bᵀx`` by less than 1 % of ``||r||² / λ_max`` (steepest descent's least
    decrease; ``λ_max`` estimated by 20 Lanczos steps at setup, ``extras["lambda_max"]``), is
    replaced by the residual for that step (``counters["fallback"]``); if the residual gives
    no step either (``qᵀAq <= 0`` after orthogonalisation), the run ends ``BREAKDOWN`` (``A``
    is not positive semidefinite on it). For a :class:`~solvers.linear._dcdm_network.DirectionNetwork`
    the network computes only its learned part ``f(r) - r`` and ``r`` is added in the iterate's
    precision (in float32 the sum kept four digits of ``r``: the iteration stalled near 1e-4).
    Metrics: ``residual`` (``||b - A x|| / ||b||``). Counters: ``matvec``, ``network``,
    ``fallback``. Numpy and torch problems (CPU or CUDA); torch is imported at the first solve.
    """

    accepts: ClassVar[tuple] = (LinearSystemProblem,)
    requires: ClassVar[frozenset] = frozenset({"psd"})
    backends: ClassVar[frozenset] = frozenset({"numpy", "torch"})

    model: Any = None
    device: str | None = None
    network_dtype: str = "float32"
    directions: int = 40
    coarse_levels: int | None = None

    def validate(self) -> None:
        super().validate()
        model = self.model
        if not (model is None or isinstance(model, (str, os.PathLike)) or callable(getattr(model, "forward", None))):
            raise ValueError(f"model must be None, a path to a model file or a torch.nn.Module, got {model!r}")
        if self.device is not None and not isinstance(self.device, str):
            raise ValueError(f"device must be a device string such as 'cpu' or 'cuda', got {self.device!r}")
        check_choice("network_dtype", self.network_dtype, ("float32", "float64"))
        check_int("directions", self.directions, 0)
        if self.coarse_levels is not None:
            check_int("coarse_levels", self.coarse_levels, 0)

    def check(self, problem: Problem) -> str | None:
        reason = super().check(problem)
        if reason is not None:
            return reason
        grid = problem.metadata.get("grid")
        if grid is None or len(grid) != 3:
            return (
                f"dcdm needs the 3-D grid of the unknowns in metadata['grid'], which problem {problem.name!r} "
                f"{'lacks' if grid is None else f'gives as {tuple(grid)}'}"
            )
        n = problem.A.shape[0]
        cells = problem.metadata.get("cells")
        count = int(np.prod(grid)) if cells is None else len(cells)
        if count != n:
            return (
                f"metadata['grid'] {tuple(grid)} places {count} unknowns "
                f"({'every cell' if cells is None else 'metadata[cells]'}) but A has {n}"
            )
        return None

    def _network(self, device: Any) -> tuple[Any, dict]:
        import torch

        from ._dcdm_network import DEFAULT_WEIGHTS, load_model

        dtype = getattr(torch, self.network_dtype)
        if self.model is None or isinstance(self.model, (str, os.PathLike)):
            path = DEFAULT_WEIGHTS if self.model is None else self.model
            network, record = load_model(path, device)
            setup = {"model": str(path), "model_config": dict(network.config), "training": record}
            return network.to(dtype), setup
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            if tensor.device != device or tensor.dtype != dtype:
                raise ValueError(
                    f"the model's tensors are {tensor.dtype} on {tensor.device}, but dcdm runs the network in "
                    f"{dtype} on {device}: move the model (model.to({str(device)!r}, {dtype})) or set device="
                )
        return self.model, {"model": type(self.model).__name__}

    def init(self, problem: Problem, x0: Any) -> _Run:
        assert isinstance(problem, LinearSystemProblem)
        import torch

        from ._dcdm_network import GridMap, training_grid_side

        start = time.perf_counter()
        device = torch.device(self.device or ("cpu" if problem.backend == "numpy" else problem.device))
        network, setup = self._network(device)
        grid = problem.metadata["grid"]
        grid_map = GridMap(grid, problem.metadata.get("cells"), device)
        levels = self.coarse_levels
        if levels is None:
            side = training_grid_side(setup.get("training", {}))
            levels = 0 if side is None else max(0, math.floor(math.log2(max(grid) / side)))
        setup["coarse_levels"] = levels
        Z = problem.metadata.get("nullspace")
        Z = None if Z is None else convert(np.asarray(Z), problem.backend, problem.device, problem.b.dtype)
        lanczos_steps = min(problem.A.shape[0], _LANCZOS_STEPS)
        setup["lambda_max"] = _largest_eigenvalue_bound(problem.A, lanczos_steps)
        synchronize(problem.device)
        setup["setup_time_s"] = time.perf_counter() - start
        b = problem.b
        b_norm = _dot(b, b) ** 0.5
        x = b * 0 if b_norm == 0 else x0 * 1
        r = b - problem.A @ x
        return _Run(
            x,
            r,
            _dot(r, r) ** 0.5,
            b_norm or 1.0,
            (),
            network,
            grid_map,
            Z,
            device,
            getattr(torch, self.network_dtype),
            matvecs=1 + lanczos_steps,
            setup=setup,
        )

    def _network_direction(self, problem: LinearSystemProblem, state: _Run) -> Any:
        import torch

        from ._dcdm_network import DirectionNetwork, coarse_direction

        r = state.r / state.r_norm
        level = state.network_calls % (state.setup["coarse_levels"] + 1)
        # on the grid itself the network computes only its learned part and r is added in the
        # iterate's precision; a coarse direction is smooth, and float32 serves it whole
        learned_part = level == 0 and isinstance(state.network, DirectionNetwork)
        with torch.inference_mode():
            grid = state.grid_map.to_grid(convert(r, "torch", state.device, state.dtype))
            if level:
                q = coarse_direction(state.network, grid, level)
            else:
                q = (state.network.correction if learned_part else state.network)(grid)
            q = state.grid_map.from_grid(q)[0]
        q = (
            to_numpy(q).astype(problem.b.dtype)
            if problem.backend == "numpy"
            else q.to(problem.b.device, problem.b.dtype)
        )
        return r + q if learned_part else q

    def _conjugate(self, q: Any, state: _Run) -> Any:
        """``q`` with the nullspace and the kept directions' A-components removed."""
        if state.nullspace is not None:
            q = q - state.nullspace @ (state.nullspace.T @ q)
        for d in state.directions:
            q = q - (_dot(q, d.Ap) / d.curvature) * d.p
        return q

    def _usable(self, q: Any, Aq: Any, state: _Run, least_decrease: float) -> tuple[bool, float]:
        """Whether the step along ``q`` lowers the energy ``xᵀAx/2 - bᵀx`` by more than
        ``least_decrease`` (the decrease is ``(qᵀr)² / (qᵀAq)``), and ``qᵀAq``."""
        curvature = _dot(q, Aq)
        ok = np.isfinite(curvature) and curvature > 0 and _dot(q, state.r) ** 2 > least_decrease * curvature
        return bool(ok), curvature

    def step(self, problem: Problem, state: _Run) -> _Run:
        assert isinstance(problem, LinearSystemProblem)
        q = self._network_direction(problem, state)
        calls, fallbacks, matvecs = state.network_calls + 1, state.fallbacks, state.matvecs
        usable = False
        if np.isfinite(_dot(q, q)):
            q = self._conjugate(q, state)
            Aq = problem.A @ q
            matvecs += 1
            # steepest descent lowers the energy by at least ||r||² / λ_max. A network step that
            # does less than 1 % of that is refused: at 32³ the bar at 100 % refused steps that
            # later ones built on (150 iterations, 35 refused, against 84 and 2 at 1 %)
            bar = _LEAST_SHARE * state.r_norm**2 / state.setup["lambda_max"]
            usable, curvature = self._usable(q, Aq, state, bar)
        if not usable:
            fallbacks += 1
            q = self._conjugate(state.r, state)
            Aq = problem.A @ q
            matvecs += 1
            usable, curvature = self._usable(q, Aq, state, 1e-24 * state.r_norm**2 / state.setup["lambda_max"])
            if not usable:
                return replace(
                    state,
                    network_calls=calls,
                    fallbacks=fallbacks,
                    matvecs=matvecs,
                    status=Status.BREAKDOWN,
                    message=f"neither the network's direction nor the residual gives a step (rᵀAr = {curvature:.3e}): "
                    "A is not positive semidefinite on the residual",
                )
        x = state.x + (_dot(q, state.r) / curvature) * q
        r = problem.b - problem.A @ x
        kept = (*state.directions, _Direction(q, Aq, curvature))[-self.directions :] if self.directions else ()
        return replace(
            state,
            x=x,
            r=r,
            r_norm=_dot(r, r) ** 0.5,
            directions=kept,
            network_calls=calls,
            fallbacks=fallbacks,
            matvecs=matvecs + 1,
        )

    def terminate(self, problem: Problem, state: _Run) -> Status | None:
        if state.status is not None:
            return state.status
        if not np.isfinite(state.r_norm):
            return Status.NONFINITE
        return Status.CONVERGED if state.r_norm < self.tol * state.b_norm else None

    def metrics(self, problem: Problem, state: _Run) -> dict[str, float]:
        return {"residual": state.r_norm / state.b_norm}

    def postprocess(self, problem: Problem, state: _Run, status: Status) -> dict[str, Any]:
        out: dict[str, Any] = {
            "x": state.x,
            "metrics": {**self.metrics(problem, state), "setup_time_s": state.setup["setup_time_s"]},
            "counters": {"matvec": state.matvecs, "network": state.network_calls, "fallback": state.fallbacks},
            "extras": {**state.setup, "device": str(state.device)},
        }
        if state.message:
            out["message"] = state.message
        return out

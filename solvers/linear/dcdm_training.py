"""Training the search-direction network of ``dcdm``: seeded, checkpointed, resumable.

The recipe of Kaneda et al. (ICML 2023), on one training matrix ``A``:

1. **Right-hand sides from Ritz vectors.** Lanczos (:func:`optkit.lanczos.lanczos`, fully
   reorthogonalised: the reference's "normalisation correction" done twice) from ``A g``,
   ``g ~ N(0, I)`` (a start in the range of ``A``, so a pure-Neumann nullspace never enters);
   the Ritz pairs of the tridiagonal matrix, null Ritz values dropped. Each training vector is
   ``b = V c`` normalised, ``c ~ N(0, I)`` with the lowest ``low_fraction`` of the modes
   weighted by ``low_weight`` (the reference: 5,500 of 10,000 modes, weight 9): the smooth,
   slowly converging error components dominate, as they do in a solver's residuals.
2. **The loss** (:func:`galerkin_loss`): with ``q = f(b)``, the residual left by the
   A-norm-optimal step along ``q``, ``||b - A q (qᵀb)/(qᵀAq)||²``, averaged over the batch.
   It does not depend on the scale of ``q``, so the network learns a direction, not a size.
3. **Adam**, minibatches drawn from a stream seeded by ``(seed, step)``: a run resumed from a
   checkpoint draws the same batches as an uninterrupted one.

Run from the command line (``python -m solvers.linear.dcdm_training --help``); the run's
directory keeps ``ritz.npz`` (the Ritz basis, computed once), ``checkpoint.pt`` (model,
optimizer, step, losses; written every ``checkpoint_every`` steps, at Ctrl-C and at the end)
and ``model.pt`` (the trained model, :func:`solvers.linear._dcdm_network.save_model`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from optkit.lanczos import lanczos
from optkit.linop import aslinearoperator
from optkit.registry import get_problem
from optkit.validation import check_choice, check_int, check_positive

from ._dcdm_network import PRESETS, DirectionNetwork, GridMap, save_model

__all__ = ["RitzRightHandSides", "TrainingConfig", "galerkin_loss", "ritz_basis", "train"]


def ritz_basis(A: Any, steps: int, *, seed: int = 0, null_tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and vectors of ``steps`` Lanczos steps on ``A`` started from ``A g``.

    Parameters
    ----------
    A : scipy sparse matrix or LinearOperator, shape (n, n)
        Symmetric positive semidefinite.
    steps : int
        Lanczos steps (``1 <= steps <= n``).
    seed : int
        Seeds ``g``.
    null_tol : float
        Ritz values ``<= null_tol * max`` are dropped (the nullspace of a pure-Neumann system).

    Returns
    -------
    theta : numpy.ndarray, shape (k,)
        Ritz values, ascending.
    V : numpy.ndarray of float32, shape (n, k)
        The Ritz vectors, orthonormal columns.
    """
    steps = check_int("steps", steps, 1)
    n = A.shape[0]
    start = A @ np.random.default_rng(seed).standard_normal(n)
    decomposition = lanczos(A, min(steps, n), v0=start)
    theta, S = decomposition.ritz()
    keep = theta > null_tol * theta.max()
    return theta[keep], (decomposition.basis @ S[:, keep]).astype(np.float32)


class RitzRightHandSides:
    """Unit training vectors ``b = V c / ||V c||`` with the low modes weighted up.

    Parameters
    ----------
    V : numpy.ndarray, shape (n, k)
        Ritz vectors, columns in ascending order of their Ritz values.
    low_fraction : float
        Share of the modes (the lowest) whose coefficients are multiplied by ``low_weight``.
    low_weight : float
    """

    def __init__(self, V: np.ndarray, *, low_fraction: float = 0.55, low_weight: float = 9.0) -> None:
        if not 0 <= low_fraction <= 1:
            raise ValueError(f"low_fraction must be in [0, 1], got {low_fraction!r}")
        self.V = np.ascontiguousarray(V, dtype=np.float32)
        self.weights = np.ones(V.shape[1], dtype=np.float32)
        self.weights[: round(low_fraction * V.shape[1])] = check_positive("low_weight", low_weight)

    def batch(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``(size, n)`` float32 unit rows."""
        c = rng.standard_normal((self.V.shape[1], size)).astype(np.float32) * self.weights[:, None]
        b = (self.V @ c).T
        return b / np.linalg.norm(b, axis=1, keepdims=True)


def galerkin_loss(
    model: torch.nn.Module, grid_map: GridMap, A: Any, b: torch.Tensor, nullspace: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the batch of ``||b - A q (qᵀb)/(qᵀAq)||²``, ``q = f(b)``.

    Parameters
    ----------
    model : torch.nn.Module
        Grid in, grid out (``(batch, 1, *grid)``).
    grid_map : GridMap
        Places the unknowns on the grid.
    A : torch.Tensor or LinearOperator, shape (n, n)
        The system matrix (anything with ``A @ X`` for a tensor ``X``), on ``b``'s dtype and device.
    b : torch.Tensor, shape (batch, n)
    nullspace : torch.Tensor, shape (n, k), optional
        Orthonormal nullspace of ``A``, projected out of ``q`` (as ``dcdm`` does).

    Returns
    -------
    torch.Tensor
        A scalar; invariant under ``q -> c q`` for any ``c != 0``.
    """
    q = grid_map.from_grid(model(grid_map.to_grid(b)))
    if nullspace is not None:
        q = q - (q @ nullspace) @ nullspace.T
    Aq = (A @ q.T).T
    step = (q * b).sum(dim=1) / (q * Aq).sum(dim=1)
    r = b - step[:, None] * Aq
    return (r * r).sum(dim=1).mean()


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that determines a training run (two runs with equal configs are equal).

    Attributes
    ----------
    problems : tuple of str
        Problem specs of the training matrices (registered linear systems with
        ``metadata["grid"]``); step ``k`` trains on matrix ``k mod len(problems)``.
    architecture : dict
        :class:`DirectionNetwork` keyword arguments.
    lanczos_steps : int
        Ritz vectors are computed from this many Lanczos steps.
    low_fraction, low_weight : float
        See :class:`RitzRightHandSides`.
    batch_size, steps : int
        Vectors per Adam step and number of steps.
    lr : float
        Adam's learning rate.
    schedule : {"cosine", "constant"}
        ``"cosine"``: the rate decays to 0 over ``steps`` (half a cosine period).
    seed : int
        Seeds the weights, the Lanczos start and every batch.
    checkpoint_every : int
        Steps between checkpoints (and validation losses).
    validation_size : int
        Held-out training-distribution vectors per matrix, scored at each checkpoint (the mean).
    """

    problems: tuple = (
        "linear/pressure-3d:n=32,geometry=spheres,seed=0",
        "linear/pressure-3d:n=32,geometry=liquid,seed=0",
    )
    architecture: dict = field(default_factory=lambda: dict(PRESETS["small"]))
    lanczos_steps: int = 500
    low_fraction: float = 0.55
    low_weight: float = 9.0
    batch_size: int = 10
    steps: int = 3000
    lr: float = 1e-3
    schedule: str = "cosine"
    seed: int = 0
    checkpoint_every: int = 100
    validation_size: int = 20

    def __post_init__(self) -> None:
        for name in ("lanczos_steps", "batch_size", "steps", "checkpoint_every", "validation_size"):
            check_int(name, getattr(self, name), 1)
        if isinstance(self.problems, str) or not self.problems or not all(isinstance(p, str) for p in self.problems):
            raise ValueError(f"problems must be a non-empty tuple of problem specs, got {self.problems!r}")
        object.__setattr__(self, "problems", tuple(self.problems))  # a list read back from JSON
        check_int("seed", self.seed, 0)
        check_positive("lr", self.lr)
        check_choice("schedule", self.schedule, ("cosine", "constant"))
        DirectionNetwork(**self.architecture)


@dataclass
class TrainingRun:
    """What :func:`train` returns: the model, the loss of every step, the validation losses by
    step, the wall time (all sessions of a resumed run) and whether every step is done (then
    ``model.pt`` is written; otherwise the checkpoint holds the run)."""

    model: DirectionNetwork
    losses: list[float]
    validation: dict[int, float]
    elapsed_s: float
    complete: bool


@dataclass(frozen=True)
class _TrainingSystem:
    """One training matrix: its right-hand-side stream, grid map, float32 operator, nullspace."""

    rhs: RitzRightHandSides
    grid_map: GridMap
    A: Any
    nullspace: torch.Tensor | None

    def loss(self, model: torch.nn.Module, b: torch.Tensor) -> torch.Tensor:
        return galerkin_loss(model, self.grid_map, self.A, b, self.nullspace)


def _training_system(spec: str, index: int, config: TrainingConfig, out: Path) -> _TrainingSystem:
    problem = get_problem(spec)
    grid = problem.metadata.get("grid")
    if problem.matrix is None or grid is None or len(grid) != 3:
        raise ValueError(f"problem {spec!r} must be a linear system with a matrix and a 3-D metadata['grid']")
    cache = out / f"ritz{index}.npz"
    key = np.array(json.dumps([spec, config.lanczos_steps, config.seed]))
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["key"]) != str(key):
                raise ValueError(f"{cache} was computed for another problem, Lanczos length or seed: use a new --out")
            V = saved["V"]
    else:
        V = ritz_basis(problem.matrix, config.lanczos_steps, seed=config.seed)[1]
        np.savez(out / "ritz.tmp.npz", V=V, key=key)
        os.replace(out / "ritz.tmp.npz", cache)
    Z = problem.metadata.get("nullspace")
    return _TrainingSystem(
        RitzRightHandSides(V, low_fraction=config.low_fraction, low_weight=config.low_weight),
        GridMap(grid, problem.metadata.get("cells")),
        aslinearoperator(problem.matrix).to("torch", "cpu", "float32"),
        None if Z is None else torch.as_tensor(Z, dtype=torch.float32),
    )


def train(
    config: TrainingConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    command: str = "",
    session_steps: int | None = None,
) -> TrainingRun:
    """Train (or resume training) a direction network; see the module docstring.

    Parameters
    ----------
    config : TrainingConfig
    out : path
        The run's directory (created); an existing checkpoint there is resumed when its config
        equals ``config``, and refused otherwise.
    progress : bool
        A tqdm bar with the running loss.
    command : str
        The command line recorded in the model file (:func:`main` gives its own).
    session_steps : int, optional
        Take at most this many steps in this call, then checkpoint (a run in timed sessions).

    Returns
    -------
    TrainingRun
        Ctrl-C ends the run after writing a checkpoint, as ``session_steps`` does; ``complete``
        is then False and ``model.pt`` is not written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    systems = [_training_system(spec, i, config, out) for i, spec in enumerate(config.problems)]
    torch.manual_seed(config.seed)
    model = DirectionNetwork(**config.architecture)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps) if config.schedule == "cosine" else None
    losses: list[float] = []
    validation: dict[int, float] = {}
    elapsed = 0.0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved["config"] != asdict(config):
            raise ValueError(f"{checkpoint} belongs to a run with another configuration: use a new --out")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if decay is not None:
            decay.load_state_dict(saved["schedule"])
        losses = saved["losses"].tolist()
        validation = (
            {int(k): float(v) for k, v in zip(*saved["validation"].tolist())} if saved["validation"].numel() else {}
        )
        elapsed = float(saved["elapsed_s"])
    held_out = [
        torch.as_tensor(system.rhs.batch(config.validation_size, np.random.default_rng([config.seed, 2**32 - 1, i])))
        for i, system in enumerate(systems)
    ]

    def save_checkpoint() -> None:
        steps = sorted(validation)
        payload = {
            "config": asdict(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": decay.state_dict() if decay is not None else {},
            "losses": torch.tensor(losses, dtype=torch.float64),
            "validation": torch.tensor([steps, [validation[s] for s in steps]], dtype=torch.float64),
            "elapsed_s": elapsed,
        }
        torch.save(payload, out / "checkpoint.tmp.pt")
        os.replace(out / "checkpoint.tmp.pt", checkpoint)

    stop = (
        config.steps
        if session_steps is None
        else min(config.steps, len(losses) + check_int("session_steps", session_steps, 1))
    )
    bar = tqdm(total=config.steps, initial=len(losses), desc="dcdm training", disable=not progress, unit="step")
    started = time.perf_counter()
    try:
        for step in range(len(losses), stop):
            system = systems[step % len(systems)]
            b = torch.as_tensor(system.rhs.batch(config.batch_size, np.random.default_rng([config.seed, step])))
            loss = system.loss(model, b)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss became {loss.item()} at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if decay is not None:
                decay.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == stop:
                with torch.no_grad():
                    validation[step + 1] = float(np.mean([s.loss(model, b).item() for s, b in zip(systems, held_out)]))
                elapsed += time.perf_counter() - started
                started = time.perf_counter()
                save_checkpoint()
    except KeyboardInterrupt:
        elapsed += time.perf_counter() - started
        save_checkpoint()
    finally:
        bar.close()
    complete = len(losses) == config.steps
    if complete:
        record = {
            "command": command,
            "config": json.dumps(asdict(config)),
            "first_losses": losses[:5],
            "final_loss": float(np.mean(losses[-50:])),
            "validation_loss": validation[max(validation)],
            "elapsed_s": elapsed,
            "torch": str(torch.__version__),
        }
        save_model(out / "model.pt", model, record)
    return TrainingRun(model.eval(), losses, validation, elapsed, complete)


def _parser() -> argparse.ArgumentParser:
    defaults = TrainingConfig()
    p = argparse.ArgumentParser(
        prog="python -m solvers.linear.dcdm_training",
        description="Train the dcdm search-direction network (resumes a run found in --out).",
    )
    p.add_argument("--out", required=True, help="run directory (checkpoints, Ritz basis, model.pt)")
    p.add_argument(
        "--problem", action="append", dest="problems", help="a training matrix (problem spec); repeat for several"
    )
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="network architecture")
    p.add_argument("--filters", type=int, help="override the preset's channel count")
    p.add_argument("--levels", type=int, help="override the preset's pooling levels")
    for name in ("lanczos_steps", "batch_size", "steps", "seed", "checkpoint_every"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "low_fraction", "low_weight"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    p.add_argument("--schedule", default=defaults.schedule, choices=("cosine", "constant"))
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    architecture = dict(PRESETS[args.preset])
    for name in ("filters", "levels"):
        if getattr(args, name) is not None:
            architecture[name] = getattr(args, name)
    config = TrainingConfig(
        problems=tuple(args.problems) if args.problems else TrainingConfig.problems,
        architecture=architecture,
        lanczos_steps=args.lanczos_steps,
        low_fraction=args.low_fraction,
        low_weight=args.low_weight,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        schedule=args.schedule,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "solvers.linear.dcdm_training", *argv])
    run = train(config, args.out, progress=not args.quiet, command=command)
    where = Path(args.out) / ("model.pt" if run.complete else "checkpoint.pt")
    print(f"{'done' if run.complete else 'stopped'} after {len(run.losses)} steps, {run.elapsed_s:.0f} s: {where}")
    return 0 if run.complete else 130


if __name__ == "__main__":
    raise SystemExit(main())

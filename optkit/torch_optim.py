"""Torch optimizers as solvers: one adapter from a ``torch.optim.Optimizer`` factory to an :class:`IterativeSolver`.

A solver built on :class:`TorchOptimizerSolver` only says how to build its optimizer
(:meth:`~TorchOptimizerSolver.make_optimizer`); the adapter trains, on the problem kinds it
accepts:

- a :class:`~optkit.training.TrainingTask`: the task's model, its token batches, judged by the
  validation loss;
- a :class:`~optkit.finite_sum.FiniteSumProblem`: the variable as one parameter of shape
  ``problem.x_shape``, seeded minibatches of ``batch_size`` samples, the problem's own batch
  gradient, judged by the exact full objective (and test accuracy where the problem has a test
  split);
- any other :class:`~optkit.problem.SmoothProblem`: the full gradient at every step.

One iteration is one optimizer step (over ``accumulation_steps`` micro-batches), so
``max_iter`` is the number of optimizer steps; the driver of :class:`IterativeSolver` gives the
trace, the callback, the time limit and Ctrl-C (the steps finished are kept). Problems stay
on their backend: a numpy problem's gradient is handed to the optimizer as a float64 CPU tensor
without a copy, a torch problem's as it is (CPU or CUDA). torch is imported when a run starts.
"""

from __future__ import annotations

import abc
import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ._optimizer_state import _refresh_seconds, restore_state_dtypes, state_bytes
from .backend import convert, has_module, optional_import, synchronize, to_numpy
from .finite_sum import FiniteSumProblem
from .problem import Problem, SmoothProblem
from .result import Status
from .solver import IterativeSolver
from .training import TrainingTask
from .validation import check_choice, check_int, check_nonnegative, check_positive

if TYPE_CHECKING:
    import torch

__all__ = ["TorchOptimizerSolver", "TorchRun", "restore_state_dtypes", "state_bytes", "variable_module"]

_MB = 2**20


@dataclass(eq=False)
class TorchRun:
    """A run in progress (mutable: one step updates it in place).

    Attributes
    ----------
    model : torch.nn.Module
        The model trained (for a smooth problem, :func:`variable_module` holding the variable).
    optimizer : torch.optim.Optimizer
    batches : iterator or None
        Token batches (training task), sample-index batches (finite-sum problem), or ``None``
        (full gradient).
    base_lrs : list of float
        Each param group's learning rate before the schedule's factor.
    total_steps : int
        Steps the schedule spans: ``max_iter``, or fewer when ``epochs`` ends the run first.
    nit : int
        Optimizer steps completed.
    seen : int
        Tokens (training task) or samples (smooth problems) in the completed steps.
    train_s : float
        Seconds in the completed steps (device-synchronised), measuring excluded.
    loss : float or None
        Mean micro-batch loss of the last step (``None`` before the first).
    lr : float or None
        Learning rate of the first param group in the last step.
    peak_bytes, optimizer_bytes : int
        Largest parameters + gradients + optimizer-state footprint seen, and the optimizer
        state after the last step (see :func:`state_bytes`).
    evaluated_at : int
        The step whose measures ``evaluation`` holds (-1: none yet).
    evaluation : dict or None
        ``problem.evaluate`` of the model or variable at ``evaluated_at``.
    """

    model: Any
    optimizer: Any
    batches: Iterator[Any] | None
    base_lrs: list[float]
    total_steps: int
    nit: int = 0
    seen: int = 0
    train_s: float = 0.0
    loss: float | None = None
    lr: float | None = None
    peak_bytes: int = 0
    optimizer_bytes: int = 0
    evaluated_at: int = -1
    evaluation: dict | None = None

    @property
    def x(self) -> Any:
        return self.model


def variable_module(x: torch.Tensor) -> torch.nn.Module:
    """A module whose one parameter, ``weight``, is ``x``: how a problem's variable meets an optimizer."""
    import torch

    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(x)
    return module


@dataclass(frozen=True, kw_only=True)
class TorchOptimizerSolver(IterativeSolver):
    """Train with a torch optimizer: the base of every optimizer recipe (see the module docstring).

    Options
    -------
    max_iter : int
        Optimizer steps (each over ``accumulation_steps`` micro-batches).
    time_limit : float or None
        Seconds; what was trained so far comes back with status ``TIME_LIMIT``.
    tol : float or None
        Smooth and finite-sum problems: stop (``CONVERGED``) when the full gradient's Euclidean
        norm is ``<= tol``, tested every ``eval_every`` steps (a counted, timed full gradient).
        ``None`` (default): no test; the run ends at ``max_iter``, ``epochs`` or the time limit.
        A training task has no convergence test: ``tol`` must stay ``None`` there.
    lr : float
        Peak learning rate (of every param group).
    weight_decay : float
        Weight decay (>= 0) as the recipe's optimizer defines it: decoupled in ``adamw`` and the
        GaLore recipes, L2 added to the gradient in ``adam``, ``sgd`` and ``mfac``. Default 0.
    schedule : {"cosine", "constant"}
        After warm-up: cosine decay from ``lr`` to ``min_lr_ratio * lr`` over the remaining
        steps of the run (GaLore's schedule), or constant ``lr``.
    warmup : float
        Fraction of the run's steps (in [0, 1]) of linear warm-up: step ``t < W`` uses
        ``lr * (t + 1) / W``.
    min_lr_ratio : float
        Final learning rate over ``lr`` of the cosine schedule (GaLore: 0.1).
    grad_clip : float or None
        Clip the global gradient norm to this value before each step; ``None``: no clipping.
    accumulation_steps : int
        Micro-batches per optimizer step; the step's gradient is their mean.
    batch_size : int or None
        Finite-sum problems: samples per micro-batch (``None``: the full gradient, one epoch
        per micro-batch). Not for training tasks (their batches are the task's).
    epochs : float or None
        Finite-sum problems: end the run (status ``MAX_ITER``) once this many passes over the
        samples are done; the schedule then spans those steps.
    eval_every : int
        Measure every ``eval_every`` steps, at step 0 and at the end: the validation loss of a
        training task, ``problem.evaluate`` of a smooth problem (exact objective, gradient norm,
        accuracies). Measuring is not timed.
    seed : int
        Seeds torch's global random stream before the optimizer is built (for optimizers that
        draw from it) and the minibatch stream of a finite-sum problem.
    torch_threads : int or None
        Threads torch uses during the run (``torch.set_num_threads``, restored afterwards).
        ``None`` (default): 1 on a numpy problem, torch's own setting otherwise. A numpy
        problem's gradients run on numpy's BLAS threads and the optimizer step on the variable
        alone; torch's OpenMP threads spin-wait between its parallel regions and contend with
        BLAS's for the same cores (measured on 2 cores: a GaLore step on a 10 x 65 softmax
        weight 10x slower with both pools at 2 threads, and as fast as alone with torch at 1).

    Trace (one row per optimizer step; row 0 is the start)
    -------------------------------------------------------
    Every problem: ``loss`` (the step's mean micro-batch loss), ``lr``, ``peak_mem_mb``,
    ``opt_state_mb``, ``refresh_s``. Training tasks: ``tokens``, ``tokens_per_s`` and
    ``val_loss``/``val_ppl`` on measured steps. Smooth problems: ``epoch`` (samples over
    ``n_samples``; for a plain smooth problem, the step count), ``samples_per_s`` and, on
    measured steps, every ``problem.evaluate`` measure (``fun``, ``grad_norm``,
    ``test_accuracy`` ...).

    ``peak_mem_mb``: on CUDA, ``torch.cuda.max_memory_allocated`` since the run started
    (everything: weights, activations, workspace). On the CPU it is **not** a process peak: it
    is the largest footprint of parameters + gradients + optimizer state right after each step
    (:func:`state_bytes`), activations excluded. ``opt_state_mb``: the optimizer state alone.
    ``refresh_s``: cumulative seconds the optimizer spent recomputing projector bases, read from
    its ``projector_refresh_seconds`` (0 for optimizers without projectors; absent when a
    projecting optimizer does not time them).

    A step whose loss is NaN or inf is not taken: the run ends with status ``NONFINITE`` and
    the weights that gave that loss.

    ``Result.x``: the trained model (training task), or the variable on the problem's backend,
    shape (n,). ``Result.fun``: the final validation loss or exact objective.
    ``Result.extras["optimizer"]``: the optimizer (for ``state_dict()``). ``x0``: a module to
    start from (training task; copied) or a point (n,).
    """

    accepts: ClassVar[tuple] = (TrainingTask, SmoothProblem)
    backends: ClassVar[frozenset] = frozenset({"numpy", "torch"})
    # whether the optimizer projects gradients: its refresh time is then reported only if it times it
    projects: ClassVar[bool] = False

    tol: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.1
    min_lr_ratio: float = 0.1
    grad_clip: float | None = None
    accumulation_steps: int = 1
    batch_size: int | None = None
    epochs: float | None = None
    eval_every: int = 100
    seed: int = 0
    torch_threads: int | None = None

    def validate(self) -> None:
        if self.tol is not None:
            check_positive("tol", self.tol)
        check_int("max_iter", self.max_iter, 0)
        if self.time_limit is not None:
            check_positive("time_limit", self.time_limit)
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_choice("schedule", self.schedule, ("cosine", "constant"))
        if check_nonnegative("warmup", self.warmup) > 1:
            raise ValueError(f"warmup must be a fraction of the run's steps in [0, 1], got {self.warmup!r}")
        if check_nonnegative("min_lr_ratio", self.min_lr_ratio) > 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        check_int("accumulation_steps", self.accumulation_steps, 1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        if self.epochs is not None:
            check_positive("epochs", self.epochs)
        check_int("eval_every", self.eval_every, 1)
        check_int("seed", self.seed, 0)
        if self.torch_threads is not None:
            check_int("torch_threads", self.torch_threads, 1)

    def check(self, problem: Problem) -> str | None:
        if not has_module("torch"):
            return f"solver {self.name!r} needs torch, which is not installed (pip install torch)"
        reason = super().check(problem)
        if reason is not None:
            return reason
        if isinstance(problem, TrainingTask):
            given = [name for name in ("tol", "batch_size", "epochs") if getattr(self, name) is not None]
            if given:
                return (
                    f"solver {self.name!r}: {', '.join(given)} apply to smooth and finite-sum problems, not to the "
                    f"training task {problem.name!r} (its batches are its own; a training run has no tolerance)"
                )
        elif not isinstance(problem, FiniteSumProblem):
            given = [name for name in ("batch_size", "epochs") if getattr(self, name) is not None]
            if given:
                names = ", ".join(given)
                return f"solver {self.name!r}: {names} need a finite-sum problem; {problem.name!r} is not one"
        return None

    @abc.abstractmethod
    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``model``'s parameters, with learning rate ``self.lr``.

        ``model`` is the training task's model, or for a smooth ``problem`` the
        :func:`variable_module` holding the variable (its ``weight``, of shape
        ``problem.x_shape`` for a finite-sum problem)."""

    def lr_factor(self, step: int, total_steps: int | None = None) -> float:
        """The schedule's multiplier of ``lr`` at optimizer step ``step`` (0-based) of a run of
        ``total_steps`` steps (default ``max_iter``)."""
        total = self.max_iter if total_steps is None else total_steps
        warmup = round(self.warmup * total)
        if step < warmup:
            return (step + 1) / warmup
        if self.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def solve(self, problem: Problem, *, x0: Any = None, callback: Any = None):
        threads = self.torch_threads or (1 if problem.backend == "numpy" else None)
        if threads is None or not has_module("torch"):
            return super().solve(problem, x0=x0, callback=callback)
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return super().solve(problem, x0=x0, callback=callback)
        finally:
            torch.set_num_threads(before)

    # ------------------------------------------------------------------ driver hooks

    def init(self, problem: Problem, x0: Any) -> TorchRun:
        torch = optional_import("torch", f"solver {self.name!r}")
        if problem.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(problem.device)
        total = self.max_iter
        if isinstance(problem, TrainingTask):
            model, batches = self._training_model(torch, problem, x0), problem.train_batches()
        else:
            assert isinstance(problem, SmoothProblem)
            x = problem.x0 if x0 is None else x0
            if getattr(x, "shape", None) != tuple(problem.x0.shape):
                raise ValueError(f"x0 must be an array of shape {tuple(problem.x0.shape)}, got {type(x).__name__}")
            shape = problem.x_shape if isinstance(problem, FiniteSumProblem) else tuple(problem.x0.shape)
            weight = convert(x, "torch", problem.device).reshape(shape).clone()
            model, batches = variable_module(weight), None
            if isinstance(problem, FiniteSumProblem) and self.batch_size is not None:
                batches = problem.batches(self.batch_size, seed=self.seed)
            if self.epochs is not None:
                # an epoch is ceil(N / batch_size) minibatches, the last one partial
                per_epoch = math.ceil(problem.n_samples / (self.batch_size or problem.n_samples))
                total = min(total, math.ceil(self.epochs * per_epoch / self.accumulation_steps))
        model.train()
        torch.manual_seed(self.seed)
        optimizer = self.make_optimizer(model, problem)
        run = TorchRun(model, optimizer, batches, [g["lr"] for g in optimizer.param_groups], total)
        footprint = state_bytes(model, optimizer)
        run.peak_bytes, run.optimizer_bytes = sum(footprint.values()), footprint["optimizer"]
        return run

    def _training_model(self, torch, problem: TrainingTask, x0: Any) -> torch.nn.Module:
        if x0 is None:
            return problem.make_model()
        if isinstance(x0, torch.nn.Module):
            return copy.deepcopy(x0).to(device=problem.device, dtype=problem.dtype)
        raise ValueError(f"x0 must be a torch.nn.Module to start from (or None), got {type(x0).__name__}")

    def step(self, problem: Problem, state: TorchRun) -> TorchRun:
        import torch

        factor = self.lr_factor(state.nit, state.total_steps)
        for group, base in zip(state.optimizer.param_groups, state.base_lrs):
            group["lr"] = base * factor
        start = time.perf_counter()
        if isinstance(problem, TrainingTask):
            mean_loss, seen = self._training_gradient(problem, state)
        else:
            mean_loss, seen = self._problem_gradient(problem, state)
        # a non-finite loss ends the run (NONFINITE, from the recorded loss) with the weights
        # it was measured at: the step it would poison is not taken
        if math.isfinite(mean_loss):
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(state.model.parameters(), self.grad_clip)
            state.optimizer.step()
        synchronize(problem.device)
        elapsed = time.perf_counter() - start
        # the state is updated only now, so an interrupted step leaves it at the last finished one
        footprint = state_bytes(state.model, state.optimizer)
        state.peak_bytes = max(state.peak_bytes, sum(footprint.values()))
        state.optimizer_bytes = footprint["optimizer"]
        state.optimizer.zero_grad(set_to_none=True)
        state.train_s += elapsed
        state.seen += seen
        state.loss = mean_loss
        state.lr = state.optimizer.param_groups[0]["lr"]
        state.nit += 1
        return state

    def _training_gradient(self, problem: TrainingTask, state: TorchRun) -> tuple[float, int]:
        total, tokens = None, 0
        for _ in range(self.accumulation_steps):
            batch = next(state.batches)
            loss = problem.loss(state.model, batch)
            (loss / self.accumulation_steps).backward()
            total = loss.detach() if total is None else total + loss.detach()
            tokens += batch.numel()
        return float(total) / self.accumulation_steps, tokens

    def _problem_gradient(self, problem: SmoothProblem, state: TorchRun) -> tuple[float, int]:
        weight = state.model.weight
        x = self._variable(problem, weight)
        losses, grad, samples = [], None, 0
        for _ in range(self.accumulation_steps):
            if state.batches is None:
                f, g = problem.fun_and_grad(x)
                samples += problem.n_samples if isinstance(problem, FiniteSumProblem) else 1
            else:
                indices = next(state.batches)
                f, g = problem.batch_fun_and_grad(x, indices)
                samples += int(indices.shape[0])
            losses.append(f)
            grad = g if grad is None else grad + g
        g = convert(grad, "torch", problem.device).reshape(weight.shape) / self.accumulation_steps
        weight.grad = g.to(weight.dtype)
        return math.fsum(losses) / len(losses), samples

    @staticmethod
    def _variable(problem: Problem, weight: torch.Tensor) -> Any:
        """The parameter as the problem's (n,) array: a view for numpy on the CPU and for torch."""
        flat = weight.detach().reshape(-1)
        return flat if problem.backend == "torch" else flat.cpu().numpy()

    def terminate(self, problem: Problem, state: TorchRun) -> Status | None:
        if self.tol is not None and self._measured_step(state):
            g = problem.grad(self._variable(problem, state.model.weight))
            if float((g * g).sum() ** 0.5) <= self.tol:
                return Status.CONVERGED
        if state.nit >= state.total_steps and state.nit < self.max_iter:
            return Status.MAX_ITER  # the epoch budget
        return None

    def _measured_step(self, state: TorchRun) -> bool:
        return state.nit % self.eval_every == 0 or state.nit >= state.total_steps

    def metrics(self, problem: Problem, state: TorchRun) -> dict[str, float]:
        out: dict[str, float] = {}
        if state.loss is not None:
            out.update(loss=state.loss, lr=state.lr)
        if isinstance(problem, TrainingTask):
            out["tokens"] = state.seen
            if state.loss is not None:
                out["tokens_per_s"] = state.seen / state.train_s if state.train_s > 0 else 0.0
        else:
            n = problem.n_samples if isinstance(problem, FiniteSumProblem) else 1
            out["epoch"] = state.seen / n
            if state.loss is not None:
                out["samples_per_s"] = state.seen / state.train_s if state.train_s > 0 else 0.0
        out["peak_mem_mb"] = self._peak_bytes(problem, state) / _MB
        out["opt_state_mb"] = state.optimizer_bytes / _MB
        refresh = _refresh_seconds(state.optimizer)
        if refresh is not None or not self.projects:
            out["refresh_s"] = float(refresh or 0.0)
        if self._measured_step(state):
            out.update(self._evaluation(problem, state))
        return out

    def final_metrics(self, problem: Problem, state: TorchRun) -> dict[str, float]:
        out = {**self.metrics(problem, state), **self._evaluation(problem, state)}
        out["fun"] = out["val_loss"] if isinstance(problem, TrainingTask) else out["fun"]
        return out

    def postprocess(self, problem: Problem, state: TorchRun, status: Status) -> dict[str, Any]:
        # gradients of an interrupted step are not part of the result
        state.optimizer.zero_grad(set_to_none=True)
        if isinstance(problem, TrainingTask):
            x = state.model
        else:
            x = self._variable(problem, state.model.weight)
            x = x.clone() if problem.backend == "torch" else x.copy()
        out = {"x": x, "extras": {"optimizer": state.optimizer}}
        if status is Status.MAX_ITER and state.total_steps < self.max_iter:
            out["message"] = f"ran the epochs asked for (epochs={self.epochs:g}: {state.total_steps} steps)"
        return out

    def _evaluation(self, problem: Problem, state: TorchRun) -> dict[str, float]:
        if state.evaluated_at != state.nit:
            if isinstance(problem, TrainingTask):
                measures = problem.evaluate(state.model)
            else:
                with problem.uncounted():
                    x = self._variable(problem, state.model.weight)
                    measures = {k: float(to_numpy(v)) for k, v in problem.evaluate(x).items()}
            state.evaluation, state.evaluated_at = measures, state.nit
        return dict(state.evaluation)

    def _peak_bytes(self, problem: Problem, state: TorchRun) -> float:
        if problem.device.startswith("cuda"):
            import torch

            return float(torch.cuda.max_memory_allocated(problem.device))
        return float(state.peak_bytes)

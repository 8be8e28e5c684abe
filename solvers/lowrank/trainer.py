"""Torch optimizer recipes as solvers: train a :class:`~optkit.training.TrainingTask`, record a trace.

One :class:`TorchTrainer` drives every recipe through :meth:`optkit.solver.IterativeSolver.solve`
(trace, callback, ``max_iter``, ``time_limit``, Ctrl-C keeping the finished steps); a recipe only
says how to build its optimizer. One iteration is one optimizer step over
``accumulation_steps`` micro-batches, so ``max_iter`` is the number of optimizer steps.

The registered recipes are in :mod:`solvers.lowrank.recipes`. torch is imported when a run
starts, never at import time.
"""

from __future__ import annotations

import copy
import math
import time
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from optkit.backend import optional_import, synchronize
from optkit.problem import Problem
from optkit.result import Status
from optkit.solver import IterativeSolver
from optkit.training import TrainingTask
from optkit.validation import check_choice, check_int, check_nonnegative, check_positive

if TYPE_CHECKING:
    import torch

__all__ = [
    "TorchTrainer",
    "TrainState",
    "state_bytes",
]

_MB = 2**20


@dataclass(eq=False)
class TrainState:
    """A training run in progress (mutable: one step updates it in place).

    Attributes
    ----------
    model : torch.nn.Module
        The model being trained (``Result.x`` at the end).
    optimizer : torch.optim.Optimizer
    batches : iterator of torch.LongTensor
        The task's training stream.
    base_lrs : list of float
        Each param group's learning rate before the schedule's factor.
    nit : int
        Optimizer steps completed.
    tokens : int
        Tokens in the micro-batches of the completed steps.
    train_s : float
        Seconds spent in the completed steps (forward, backward, optimizer; device-synchronised),
        without validation passes.
    loss : float or None
        Mean micro-batch training loss of the last step (``None`` before the first).
    lr : float or None
        Learning rate of the first param group in the last step.
    peak_bytes : int
        Largest parameters + gradients + optimizer-state footprint seen (see :func:`state_bytes`).
    optimizer_bytes : int
        The optimizer state's bytes after the last step.
    val_step : int
        The step whose validation measures ``val`` holds (-1: none yet).
    val : dict
        ``{"val_loss", "val_ppl"}`` of ``TrainingTask.evaluate`` at ``val_step``.
    """

    model: Any
    optimizer: Any
    batches: Iterator[Any]
    base_lrs: list[float]
    nit: int = 0
    tokens: int = 0
    train_s: float = 0.0
    loss: float | None = None
    lr: float | None = None
    peak_bytes: int = 0
    optimizer_bytes: int = 0
    val_step: int = -1
    val: dict | None = None

    @property
    def x(self) -> Any:
        return self.model


def _tensors(obj: Any, depth: int = 0) -> Iterator[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4:
        if isinstance(obj, dict):
            values = obj.values()
        elif isinstance(obj, (list, tuple)):
            values = obj
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType, torch.nn.Module)):
            # a projector object kept in the state (galore_torch's GaLoreProjector holds its basis so)
            values = vars(obj).values()
        else:
            return
        for value in values:
            yield from _tensors(value, depth + 1)


def _nbytes(tensors: Iterator[Any], seen: set) -> int:
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key not in seen and storage.data_ptr() != 0:
            seen.add(key)
            total += storage.nbytes()
    return total


def state_bytes(model: Any, optimizer: Any) -> dict[str, int]:
    """Bytes of the training tensors that live between steps, each storage counted once.

    Returns
    -------
    dict
        ``params`` (model parameters), ``grads`` (their ``.grad`` tensors that exist now) and
        ``optimizer`` (every tensor reachable from ``optimizer.state``: moments, 8-bit states
        and their quantisation maps, projector bases, including tensors held by projector
        objects). Activations, autograd buffers and temporaries are not included.
    """
    seen: set = set()
    params = list(model.parameters())
    out = {"params": _nbytes(iter(params), seen)}
    out["grads"] = _nbytes((p.grad for p in params if p.grad is not None), seen)
    out["optimizer"] = _nbytes(_tensors(list(optimizer.state.values())), seen)
    return out


@dataclass(frozen=True, kw_only=True)
class TorchTrainer(IterativeSolver):
    """Train a :class:`~optkit.training.TrainingTask` with a torch optimizer (base of every recipe).

    Options
    -------
    max_iter : int
        Optimizer steps (each over ``accumulation_steps`` micro-batches).
    time_limit : float or None
        Seconds; the model trained so far comes back with status ``TIME_LIMIT``.
    tol : float
        Not used: a training run ends at ``max_iter`` (status ``MAX_ITER``), at ``time_limit``,
        or with ``NONFINITE`` when the training or validation loss is NaN or infinite.
    lr : float
        Peak learning rate (of every param group).
    weight_decay : float
        Decoupled weight decay (>= 0). Default 0, as in the GaLore pre-training recipes.
    schedule : {"cosine", "constant"}
        After warm-up: cosine decay from ``lr`` to ``min_lr_ratio * lr`` over the remaining
        steps (GaLore's schedule), or constant ``lr``.
    warmup : float
        Fraction of ``max_iter`` (in [0, 1]) of linear warm-up: step ``t < W = round(warmup *
        max_iter)`` uses ``lr * (t + 1) / W`` (the reference starts at 0, wasting its first step).
    min_lr_ratio : float
        Final learning rate over ``lr`` of the cosine schedule (GaLore: 0.1).
    grad_clip : float or None
        Clip the global gradient norm to this value before each step; ``None``: no clipping.
    accumulation_steps : int
        Micro-batches per optimizer step; the step's gradient is their mean.
    eval_every : int
        Validation (``TrainingTask.evaluate``) every ``eval_every`` steps, at step 0 and at the
        end of the run.
    seed : int
        Seeds torch's global random stream before the optimizer is built, for optimizers that
        draw from it (optkit's projectors are seeded by their own ``proj_seed``). The model
        initialisation and the batches are the task's.

    Trace (one row per optimizer step; row 0 is the untrained model)
    ------------------------------------------------------------------
    ``loss`` (the step's mean micro-batch training loss), ``tokens`` (cumulative), ``tokens_per_s``
    (cumulative tokens over the seconds of the training steps, validation excluded), ``lr``,
    ``peak_mem_mb``, ``opt_state_mb``, ``refresh_s``, and ``val_loss``/``val_ppl`` on validation
    steps (absent on the others; the trace's ``time`` includes the validation passes).

    ``peak_mem_mb``: on CUDA, ``torch.cuda.max_memory_allocated`` since the run started
    (everything: weights, activations, workspace). On the CPU, where no allocator statistics
    exist, it is **not** a process peak: it is the largest footprint of parameters + gradients +
    optimizer state measured right after each optimizer step (:func:`state_bytes`), activations
    excluded. ``opt_state_mb``: the optimizer state alone after the step. ``refresh_s``: cumulative
    seconds the optimizer spent recomputing projector bases, read from its
    ``projector_refresh_seconds`` (summed over the inner optimizers of ``layerwise=True``); 0 for
    recipes without projectors; absent for ``galore-torch``, which does not time its SVDs.

    ``Result.x`` is the trained model, ``Result.fun`` its final validation loss,
    ``Result.extras["optimizer"]`` the optimizer (for ``state_dict()``). ``x0``, when given, is a
    module to start from (copied, then moved to the task's device).
    """

    accepts: ClassVar[tuple] = (TrainingTask,)
    backends: ClassVar[frozenset] = frozenset({"torch"})
    # whether the optimizer projects gradients: its refresh time is then reported only if it times it
    projects: ClassVar[bool] = False

    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.1
    min_lr_ratio: float = 0.1
    grad_clip: float | None = None
    accumulation_steps: int = 1
    eval_every: int = 100
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_choice("schedule", self.schedule, ("cosine", "constant"))
        if check_nonnegative("warmup", self.warmup) > 1:
            raise ValueError(f"warmup must be a fraction of max_iter in [0, 1], got {self.warmup!r}")
        if check_nonnegative("min_lr_ratio", self.min_lr_ratio) > 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        check_int("accumulation_steps", self.accumulation_steps, 1)
        check_int("eval_every", self.eval_every, 1)
        check_int("seed", self.seed, 0)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``model``'s parameters, with learning rate ``self.lr``."""
        raise NotImplementedError

    def lr_factor(self, step: int) -> float:
        """The schedule's multiplier of ``lr`` at optimizer step ``step`` (0-based)."""
        warmup = round(self.warmup * self.max_iter)
        if step < warmup:
            return (step + 1) / warmup
        if self.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, self.max_iter - warmup)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    # ------------------------------------------------------------------ driver hooks

    def init(self, problem: Problem, x0: Any) -> TrainState:
        assert isinstance(problem, TrainingTask)
        torch = optional_import("torch", f"solver {self.name!r}")
        if problem.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(problem.device)
        if x0 is None:
            model = problem.make_model()
        elif isinstance(x0, torch.nn.Module):
            model = copy.deepcopy(x0).to(device=problem.device, dtype=problem.dtype)
        else:
            raise ValueError(f"x0 must be a torch.nn.Module to start from (or None), got {type(x0).__name__}")
        model.train()
        torch.manual_seed(self.seed)
        optimizer = self.make_optimizer(model)
        state = TrainState(model, optimizer, problem.train_batches(), [g["lr"] for g in optimizer.param_groups])
        footprint = state_bytes(model, optimizer)
        state.peak_bytes, state.optimizer_bytes = sum(footprint.values()), footprint["optimizer"]
        return state

    def step(self, problem: Problem, state: TrainState) -> TrainState:
        import torch

        factor = self.lr_factor(state.nit)
        for group, base in zip(state.optimizer.param_groups, state.base_lrs):
            group["lr"] = base * factor
        start = time.perf_counter()
        total, tokens = None, 0
        for _ in range(self.accumulation_steps):
            batch = next(state.batches)
            loss = problem.loss(state.model, batch)
            (loss / self.accumulation_steps).backward()
            total = loss.detach() if total is None else total + loss.detach()
            tokens += batch.numel()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), self.grad_clip)
        state.optimizer.step()
        mean_loss = float(total) / self.accumulation_steps
        synchronize(problem.device)
        elapsed = time.perf_counter() - start
        # the state is updated only now, so an interrupted step leaves it at the last finished one
        footprint = state_bytes(state.model, state.optimizer)
        state.peak_bytes = max(state.peak_bytes, sum(footprint.values()))
        state.optimizer_bytes = footprint["optimizer"]
        state.optimizer.zero_grad(set_to_none=True)
        state.train_s += elapsed
        state.tokens += tokens
        state.loss = mean_loss
        state.lr = state.optimizer.param_groups[0]["lr"]
        state.nit += 1
        return state

    def terminate(self, problem: Problem, state: TrainState) -> Status | None:
        return None

    def metrics(self, problem: Problem, state: TrainState) -> dict[str, float]:
        out: dict[str, float] = {"tokens": state.tokens}
        if state.loss is not None:
            out.update(loss=state.loss, tokens_per_s=state.tokens / state.train_s if state.train_s > 0 else 0.0)
            out["lr"] = state.lr
        out["peak_mem_mb"] = self._peak_bytes(problem, state) / _MB
        out["opt_state_mb"] = state.optimizer_bytes / _MB
        refresh = _refresh_seconds(state.optimizer)
        if refresh is not None or not self.projects:
            out["refresh_s"] = float(refresh or 0.0)
        if state.nit % self.eval_every == 0 or state.nit >= self.max_iter:
            out.update(self._validation(problem, state))
        return out

    def postprocess(self, problem: Problem, state: TrainState, status: Status) -> dict[str, Any]:
        # gradients of an interrupted step are not part of the result
        state.optimizer.zero_grad(set_to_none=True)
        metrics = self.metrics(problem, state)
        metrics.update(self._validation(problem, state))
        return {
            "x": state.model,
            "fun": metrics["val_loss"],
            "metrics": metrics,
            "extras": {"optimizer": state.optimizer},
        }

    def _validation(self, problem: TrainingTask, state: TrainState) -> dict[str, float]:
        if state.val_step != state.nit:
            state.val = problem.evaluate(state.model)
            state.val_step = state.nit
        return dict(state.val)

    def _peak_bytes(self, problem: Problem, state: TrainState) -> float:
        if problem.device.startswith("cuda"):
            import torch

            return float(torch.cuda.max_memory_allocated(problem.device))
        return float(state.peak_bytes)


def _refresh_seconds(optimizer: Any) -> float | None:
    """The optimizer's cumulative projector refresh time (summed over a layer-wise wrapper's inner
    optimizers), or ``None`` when it keeps no such timer."""
    inner = getattr(optimizer, "inner_optimizers", None)
    timers = [getattr(o, "projector_refresh_seconds", None) for o in (inner or [optimizer])]
    timers = [t for t in timers if t is not None]
    return math.fsum(timers) if timers else None

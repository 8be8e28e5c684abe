"""optkit's GaLore optimizers registered as solvers: ``galore-adamw``, ``galore-adamw8bit``, ``galore-adafactor``;
layer sampling: ``lisa``, ``owlore``.

Each recipe is a :class:`~optkit.torch_optim.TorchOptimizerSolver` that only says how to build its
optimizer, so it trains a :class:`~optkit.training.TrainingTask` and runs on any smooth or
finite-sum problem (where the problem's variable is the one parameter, projected when it is a
matrix). Its GaLore options and their defaults are :data:`solvers.lowrank.options.GALORE_OPTIONS`,
the table the optimizers' param groups use, plus ``target`` and ``layerwise``. torch is imported
when a run starts, never at import time.
"""

from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from optkit.backend import has_module, to_numpy
from optkit.finite_sum import FiniteSumProblem
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.torch_optim import TorchOptimizerSolver
from optkit.training import TrainingTask
from optkit.validation import check_choice, check_int, check_positive

from .options import GALORE_DEFAULTS, GALORE_OPTIONS, RECIPE_RANK, check_galore_options

if TYPE_CHECKING:
    import torch

__all__ = [
    "GaLoreAdafactorRecipe",
    "GaLoreAdamW8bitRecipe",
    "GaLoreAdamWRecipe",
    "GaLoreRecipe",
    "GradNormLoRPAdamW8bitRecipe",
    "GradNormLoRPAdamWRecipe",
    "LayerSamplingRecipe",
    "LisaRecipe",
    "OwLoreRecipe",
    "QGaLoreRecipe",
]


@dataclass(frozen=True, kw_only=True)
class GaLoreRecipe(TorchOptimizerSolver):
    """An optkit GaLore optimizer (:mod:`solvers.lowrank`) as a solver; options below.

    Options
    -------
    rank : int
        GaLore's r (default 128; see :data:`solvers.lowrank.options.RECIPE_RANK`).
    update_proj_gap, scale, proj, proj_side, moments, refresh, power_iters, oversample, proj_seed, error_feedback :
        The optimizers' group options, with the same defaults
        (:data:`solvers.lowrank.options.GALORE_OPTIONS`).
    proj_bits, proj_group_size :
        The same group options for a quantised basis (``proj_bits`` 8 or 4; ``None``: dense).
    target : str
        Training tasks: which linear weights are projected (``"all-linear"``: every ``nn.Linear``
        but the output layer; ``"attn-mlp"``: the paper's choice, the same set on LLaMA; or a
        regular expression over module names), see
        :func:`solvers.lowrank.param_groups.select_linear_modules`; every other parameter trains
        full-rank in the same optimizer. Smooth problems: ignored, the variable is projected
        when it is a matrix (``x_shape`` of a finite-sum problem) and trained full-rank otherwise.
    layerwise : bool
        Step each parameter during backward (:class:`solvers.lowrank.layerwise.LayerwiseOptimizer`),
        so weight gradients never coexist; training tasks only; incompatible with ``grad_clip``.
    Others: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`.
    """

    projects: ClassVar[bool] = True
    # (module of solvers.lowrank, class name) of the optimizer
    optimizer_path: ClassVar[tuple[str, str]] = ("", "")
    # import names of the packages the optimizer needs besides torch
    needs: ClassVar[tuple[str, ...]] = ()

    rank: int = RECIPE_RANK
    update_proj_gap: int = GALORE_DEFAULTS["update_proj_gap"]
    scale: float = GALORE_DEFAULTS["scale"]
    proj: str = GALORE_DEFAULTS["proj"]
    proj_side: str = GALORE_DEFAULTS["proj_side"]
    moments: str = GALORE_DEFAULTS["moments"]
    refresh: str = GALORE_DEFAULTS["refresh"]
    power_iters: int = GALORE_DEFAULTS["power_iters"]
    oversample: int = GALORE_DEFAULTS["oversample"]
    proj_seed: int = GALORE_DEFAULTS["proj_seed"]
    error_feedback: bool = GALORE_DEFAULTS["error_feedback"]
    proj_bits: int | None = GALORE_DEFAULTS["proj_bits"]
    proj_group_size: int = GALORE_DEFAULTS["proj_group_size"]
    target: str = "all-linear"
    layerwise: bool = False

    def validate(self) -> None:
        super().validate()
        check_galore_options(self.galore_options())
        if not isinstance(self.target, str) or not self.target:
            raise ValueError(f"target must be 'all-linear', 'attn-mlp' or a regular expression, got {self.target!r}")
        if not isinstance(self.layerwise, bool):
            raise ValueError(f"layerwise must be true or false, got {self.layerwise!r}")
        if self.layerwise and self.grad_clip is not None:
            raise ValueError("grad_clip needs every gradient at once, which layerwise=True never has; drop one of them")

    def galore_options(self) -> dict:
        """``rank`` and the options of :data:`~solvers.lowrank.options.GALORE_OPTIONS`, as group options."""
        return {"rank": self.rank, **{name: getattr(self, name) for name in GALORE_OPTIONS}}

    def check(self, problem: Problem) -> str | None:
        missing = [name for name in self.needs if not has_module(name)]
        if missing:
            return f"solver {self.name!r} needs {', '.join(missing)}, which is not installed (pip install {missing[0]})"
        if self.layerwise and not isinstance(problem, TrainingTask):
            return f"solver {self.name!r} with layerwise=True steps during backward: training tasks only"
        return super().check(problem)

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        from .param_groups import galore_param_groups

        module, cls_name = self.optimizer_path
        cls = getattr(importlib.import_module(f"{__package__}.{module}"), cls_name)
        if isinstance(problem, TrainingTask):
            groups = galore_param_groups(model, self.target, **self.galore_options())
        else:  # the variable: projected when it is a matrix (GaLore trains 1-D parameters full-rank)
            groups = [{"params": [model.weight], **self.galore_options()}]
        if not self.layerwise:
            return cls(groups, lr=self.lr, weight_decay=self.weight_decay)
        from .layerwise import LayerwiseOptimizer

        def factory(inner_groups: list[dict]) -> torch.optim.Optimizer:
            return cls(inner_groups, lr=self.lr, weight_decay=self.weight_decay)

        return LayerwiseOptimizer(groups, factory, accumulation_steps=self.accumulation_steps)


@register_solver("galore-adamw")
@dataclass(frozen=True, kw_only=True)
class GaLoreAdamWRecipe(GaLoreRecipe):
    """optkit's GaLoreAdamW (solvers.lowrank.galore_adamw): AdamW moments in a low-rank gradient subspace."""

    optimizer_path: ClassVar[tuple[str, str]] = ("galore_adamw", "GaLoreAdamW")


@register_solver("galore-adamw8bit")
@dataclass(frozen=True, kw_only=True)
class GaLoreAdamW8bitRecipe(GaLoreRecipe):
    """optkit's GaLoreAdamW8bit (solvers.lowrank.galore_adamw8bit): 8-bit moments in a low-rank subspace."""

    optimizer_path: ClassVar[tuple[str, str]] = ("galore_adamw8bit", "GaLoreAdamW8bit")
    needs: ClassVar[tuple[str, ...]] = ("bitsandbytes",)


@register_solver("galore-adafactor")
@dataclass(frozen=True, kw_only=True)
class GaLoreAdafactorRecipe(GaLoreRecipe):
    """optkit's GaLoreAdafactor (solvers.lowrank.galore_adafactor): Adafactor in a low-rank subspace."""

    optimizer_path: ClassVar[tuple[str, str]] = ("galore_adafactor", "GaLoreAdafactor")


@register_solver("q-galore")
@dataclass(frozen=True, kw_only=True)
class QGaLoreRecipe(GaLoreRecipe):
    """Q-GaLore (solvers.lowrank.q_galore.QGaLoreAdamW8bit): INT8 weights, INT4 bases, lazy refresh, 8-bit moments.

    ``make_optimizer`` replaces the task model's selected linear layers by
    :class:`~solvers.lowrank.int8_linear.Int8Linear` (in place), then builds the optimizer over
    their INT8 weights (projected) and every float parameter (full-rank). Training tasks only.

    Options
    -------
    rank, update_proj_gap, scale, proj, proj_side, moments, power_iters, oversample, proj_seed, error_feedback :
        As in :class:`GaLoreRecipe`.
    proj_bits, proj_group_size : default 4, 256
        The bases' storage (Q-GaLore's INT4 in groups of 256; ``proj_bits=None``: dense).
    refresh : default ``"adaptive"``
        Lazy refresh: the gap doubles while the subspace is stable (Q-GaLore's threshold 0.4 over a
        window of 5 refreshes).
    weight_bits : int
        8, the only width of the INT8 weights.
    weight_group_size : int
        Weight values per quantisation group (default 256).
    stochastic_round : bool
        Re-quantise the weights with stochastic rounding (default) or to the nearest code; the
        rounding is seeded by ``seed``.
    target, layerwise :
        As in :class:`GaLoreRecipe`; ``target`` selects the layers quantised (and projected).
    Others: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`, but ``grad_clip``, which
    is refused (the INT8 weights' gradients are outside ``model.parameters()``' ``.grad``).
    """

    accepts: ClassVar[tuple] = (TrainingTask,)
    optimizer_path: ClassVar[tuple[str, str]] = ("q_galore", "QGaLoreAdamW8bit")
    needs: ClassVar[tuple[str, ...]] = ("bitsandbytes",)

    proj_bits: int | None = 4
    refresh: str = "adaptive"
    weight_bits: int = 8
    weight_group_size: int = 256
    stochastic_round: bool = True

    def validate(self) -> None:
        super().validate()
        if self.weight_bits != 8:
            raise ValueError(f"weight_bits must be 8 (the only INT8 weight width), got {self.weight_bits!r}")
        check_int("weight_group_size", self.weight_group_size, 1)
        if not isinstance(self.stochastic_round, bool):
            raise TypeError(f"stochastic_round must be true or false, got {self.stochastic_round!r}")
        if self.grad_clip is not None:
            raise ValueError("grad_clip is not supported by q-galore: the INT8 weights' gradients are not in .grad")

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        from .int8_linear import quantize_linear_layers
        from .q_galore import QGaLoreAdamW8bit, q_galore_param_groups

        quantize_linear_layers(model, self.target, group_size=self.weight_group_size)
        groups = q_galore_param_groups(
            model, **self.galore_options(), stochastic_round=self.stochastic_round, quant_seed=self.seed
        )
        if not self.layerwise:
            return QGaLoreAdamW8bit(groups, lr=self.lr, weight_decay=self.weight_decay)
        from .layerwise import LayerwiseOptimizer

        def factory(inner_groups: list[dict]) -> torch.optim.Optimizer:
            return QGaLoreAdamW8bit(inner_groups, lr=self.lr, weight_decay=self.weight_decay)

        return LayerwiseOptimizer(groups, factory, accumulation_steps=self.accumulation_steps)


@register_solver("gradnorm-lorp")
@dataclass(frozen=True, kw_only=True)
class GradNormLoRPAdamWRecipe(GaLoreRecipe):
    """optkit's GradNormLoRPAdamW (solvers.lowrank.gradnorm_lorp): AdamW on W = m·V/‖V‖, V's moments low-rank.

    Options: those of :class:`GaLoreRecipe` (applied to the direction ``V``'s gradient), plus
    ``norm_axis`` (``"rows"``: one magnitude per output unit of an ``nn.Linear``, the default;
    ``"columns"``: one per input unit).
    """

    optimizer_path: ClassVar[tuple[str, str]] = ("gradnorm_lorp", "GradNormLoRPAdamW")
    # solvers.lowrank.gradnorm_lorp.NORM_AXES, repeated here so that the registry imports no torch (tested)
    norm_axes: ClassVar[tuple[str, ...]] = ("rows", "columns")

    norm_axis: str = "rows"

    def validate(self) -> None:
        super().validate()
        check_choice("norm_axis", self.norm_axis, self.norm_axes)

    def check(self, problem: Problem) -> str | None:
        reason = super().check(problem)
        if reason is not None or isinstance(problem, TrainingTask):
            return reason
        # a matrix variable is weight-normalised: a zero row (column) of the start has no direction
        shape = problem.x_shape if isinstance(problem, FiniteSumProblem) else tuple(problem.x0.shape)
        if len(shape) == 2:
            start = to_numpy(problem.x0).reshape(shape)
            unit = "row" if self.norm_axis == "rows" else "column"
            if not np.all(np.linalg.norm(start, axis=1 if unit == "row" else 0) > 0):
                return f"solver {self.name!r} weight-normalises the variable, and its start has a zero {unit}"
        return None

    def galore_options(self) -> dict:
        """The GaLore group options and ``norm_axis`` (a group option of the weight-normalised optimizers)."""
        return {**super().galore_options(), "norm_axis": self.norm_axis}


@register_solver("gradnorm-lorp8bit")
@dataclass(frozen=True, kw_only=True)
class GradNormLoRPAdamW8bitRecipe(GradNormLoRPAdamWRecipe):
    """optkit's GradNormLoRPAdamW8bit (solvers.lowrank.gradnorm_lorp): GradNormLoRP with 8-bit moments for V."""

    optimizer_path: ClassVar[tuple[str, str]] = ("gradnorm_lorp", "GradNormLoRPAdamW8bit")
    needs: ClassVar[tuple[str, ...]] = ("bitsandbytes",)


@dataclass(frozen=True, kw_only=True)
class LayerSamplingRecipe(TorchOptimizerSolver):
    """Train a few of a model's repeated blocks at a time (:class:`solvers.lowrank.owlore.OwLoreAdamW`).

    Options
    -------
    active_layers : int
        Blocks trained at once, γ (default 5; all of them when the model has fewer).
    interval : int
        Steps between draws, K (default 50).
    layers : str or None
        Dotted path of the module holding the blocks (``"model.layers"``); ``None`` finds them
        (:func:`solvers.lowrank.owlore.find_layers`).
    layer_state : {"fresh", "keep"}
        A block leaving the active set releases its moments and projector and starts afresh when
        drawn again (default), or keeps them (the reference's behaviour; state of every block).
    Others: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`; ``seed`` also seeds the draws.
    Training tasks only: the blocks are the model's.
    """

    sampling: ClassVar[str] = "uniform"

    active_layers: int = 5
    interval: int = 50
    layers: str | None = None
    layer_state: str = "fresh"

    def validate(self) -> None:
        super().validate()
        check_int("active_layers", self.active_layers, 1)
        check_int("interval", self.interval, 1)
        if self.layers is not None and (not isinstance(self.layers, str) or not self.layers):
            raise ValueError(f"layers must be a module path such as 'model.layers' or None, got {self.layers!r}")
        check_choice("layer_state", self.layer_state, ("fresh", "keep"))

    def check(self, problem: Problem) -> str | None:
        if not isinstance(problem, TrainingTask):
            return f"solver {self.name!r} samples a model's blocks: training tasks only, {problem.name!r} is not one"
        reason = super().check(problem)
        if reason is not None:
            return reason
        import torch

        from .owlore import find_layers

        # the structure only: built on the meta device (no memory, no initialisation), on a forked random
        # stream; a factory that loads pretrained weights cannot run there (transformers' from_pretrained
        # refuses a meta device), and is built for real
        with torch.random.fork_rng(devices=[]):
            try:
                with torch.device("meta"):
                    model = problem.model_factory()
            except RuntimeError:
                model = problem.model_factory()
        try:
            find_layers(model, self.layers)
        except ValueError as error:
            return f"solver {self.name!r} needs a model of repeated blocks: {error}"
        return None

    def param_groups(self, model: torch.nn.Module, layers: list) -> list[dict]:
        """The optimizer's param groups: every trainable parameter, full-rank."""
        from .owlore import owlore_param_groups

        return owlore_param_groups(model, layers, rank=None)

    def outlier_ratios(self, model: torch.nn.Module, layers: list, problem: TrainingTask) -> torch.Tensor | None:
        """The blocks' outlier ratios; uniform sampling needs none."""
        return None

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        from .owlore import OwLoreAdamW, find_layers

        layers = find_layers(model, self.layers)
        return OwLoreAdamW(
            self.param_groups(model, layers),
            layers,
            outlier_ratios=self.outlier_ratios(model, layers, problem),
            sampling=self.sampling,
            active_layers=self.active_layers,
            interval=self.interval,
            layer_state=self.layer_state,
            seed=self.seed,
            lr=self.lr,
            weight_decay=self.weight_decay,
        )


@register_solver("lisa")
@dataclass(frozen=True, kw_only=True)
class LisaRecipe(LayerSamplingRecipe):
    """LISA (Pan et al., 2024): AdamW on γ uniformly drawn blocks, redrawn every K steps, and on everything
    outside the blocks; the baseline of ``owlore``."""


@register_solver("owlore")
@dataclass(frozen=True, kw_only=True)
class OwLoreRecipe(LayerSamplingRecipe, GaLoreRecipe):
    """OwLore (Li et al., 2024): GaLoreAdamW on γ blocks drawn with probability proportional to their outlier
    ratio, redrawn every K steps; AdamW outside the blocks.

    Options
    -------
    outlier_threshold : float
        OWL's M (default 13): a block's outlier ratio is the fraction of its Wanda scores above M
        times their mean (:func:`solvers.lowrank.owlore.layer_outlier_ratios`).
    calibration_batches : int
        Batches the ratios are computed from (default 8): the first ones of the task's training
        stream (seeded by the task, so the same on every rank and in every run), run through the
        task's loss without gradients, before the first step and not counted in the run's batches.
    rank, update_proj_gap, ..., target :
        As ``galore-adamw``; ``target`` selects the projected linear weights inside the blocks
        only. ``layerwise`` must stay false.
    active_layers, interval, layers, layer_state :
        As ``lisa``.
    """

    sampling: ClassVar[str] = "owl"

    outlier_threshold: float = 13.0
    calibration_batches: int = 8

    def validate(self) -> None:
        super().validate()
        check_positive("outlier_threshold", self.outlier_threshold)
        check_int("calibration_batches", self.calibration_batches, 1)
        if self.layerwise:
            raise ValueError(
                "layerwise=True is not available with owlore: its blocks are frozen and released by step()"
            )

    def param_groups(self, model: torch.nn.Module, layers: list) -> list[dict]:
        """Param groups: the blocks' ``target`` linear weights projected, everything else full-rank."""
        from .owlore import owlore_param_groups

        return owlore_param_groups(model, layers, self.target, **self.galore_options())

    def outlier_ratios(self, model: torch.nn.Module, layers: list, problem: TrainingTask) -> torch.Tensor:
        from .owlore import layer_outlier_ratios

        batches = itertools.islice(problem.train_batches(), self.calibration_batches)
        with problem.uncounted():
            return layer_outlier_ratios(model, layers, batches, forward=problem.loss, M=self.outlier_threshold)

"""The optimizer recipes registered as solvers: ``adamw``, ``adamw8bit``, ``galore-torch`` and
optkit's ``galore-adamw``, ``galore-adamw8bit``, ``galore-adafactor``.

Each recipe is a :class:`~solvers.lowrank.trainer.TorchTrainer` that only says how to build its
optimizer. torch and the optimizer libraries are imported when a run starts, never at import time.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from optkit.backend import has_module, optional_import
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.validation import check_choice, check_int, check_positive

from .trainer import TorchTrainer

if TYPE_CHECKING:
    import torch

__all__ = [
    "AdamW",
    "AdamW8bit",
    "GaLoreAdafactorRecipe",
    "GaLoreAdamW8bitRecipe",
    "GaLoreAdamWRecipe",
    "GaLoreTorch",
]


# ----------------------------------------------------------------------------- plain recipes


@register_solver("adamw")
@dataclass(frozen=True, kw_only=True)
class AdamW(TorchTrainer):
    """AdamW (``torch.optim.AdamW``, betas (0.9, 0.999), eps 1e-8) on every parameter: the full-rank baseline.

    Options: those of :class:`TorchTrainer` (``lr``, ``weight_decay``, ``schedule``, ``warmup``,
    ``min_lr_ratio``, ``grad_clip``, ``accumulation_steps``, ``eval_every``, ``seed``, ``max_iter``).
    """

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        import torch

        return torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@register_solver("adamw8bit")
@dataclass(frozen=True, kw_only=True)
class AdamW8bit(TorchTrainer):
    """8-bit AdamW from bitsandbytes (``bnb.optim.AdamW8bit``): block-wise quantised moments, CPU or CUDA.

    bitsandbytes 0.50 keeps both Adam moments as ``uint8`` codes with one float32 absmax per block
    of 256 values (dynamic quantisation map), on CUDA and, since 0.4x, on the CPU; tensors with
    fewer than 4096 elements keep float32 moments (its ``min_8bit_size``). Options: those of
    :class:`TorchTrainer`.
    """

    def check(self, problem: Problem) -> str | None:
        if not has_module("bitsandbytes"):
            return "solver 'adamw8bit' needs bitsandbytes (pip install bitsandbytes)"
        return super().check(problem)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        bnb = optional_import("bitsandbytes", "solver 'adamw8bit'")
        return bnb.optim.AdamW8bit(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)


# ----------------------------------------------------------------------------- GaLore recipes


@dataclass(frozen=True, kw_only=True)
class _GaLoreOptions(TorchTrainer):
    """The options every GaLore recipe shares."""

    projects: ClassVar[bool] = True

    rank: int = 128
    update_proj_gap: int = 200
    scale: float = 0.25

    def validate(self) -> None:
        super().validate()
        check_int("rank", self.rank, 1)
        check_int("update_proj_gap", self.update_proj_gap, 1)
        check_positive("scale", self.scale)


@register_solver("galore-torch")
@dataclass(frozen=True, kw_only=True)
class GaLoreTorch(_GaLoreOptions):
    """The official GaLore (``galore_torch.GaLoreAdamW``, jiaweizzhao/GaLore) with the reference's param groups.

    As ``torchrun_main.py``: the weights of ``nn.Linear`` modules whose name contains ``"attn"``
    or ``"mlp"`` form the group ``{"rank", "update_proj_gap", "scale", "proj_type"}``; every other
    parameter (embeddings, norms, output layer) is a plain AdamW group. The optimizer's own
    defaults otherwise (betas (0.9, 0.999), eps 1e-6, bias correction).

    Options
    -------
    rank, update_proj_gap, scale :
        GaLore's r, T and alpha (defaults 128, 200, 0.25: the paper's 60M recipe).
    proj_type : {"std", "reverse_std", "right", "left", "full"}
        The reference projector's side rule.
    Others: those of :class:`TorchTrainer`. ``refresh_s`` is not recorded: the reference does
    not time its SVDs. Its 8-bit variant synchronises CUDA inside its step and is not wrapped.
    """

    proj_type: str = "std"

    def validate(self) -> None:
        super().validate()
        check_choice("proj_type", self.proj_type, ("std", "reverse_std", "right", "left", "full"))

    def check(self, problem: Problem) -> str | None:
        if not has_module("galore_torch"):
            return "solver 'galore-torch' needs the galore-torch package (pip install galore-torch)"
        return super().check(problem)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        import torch

        galore_torch = optional_import("galore_torch", "solver 'galore-torch'")
        projected = [
            module.weight
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ("attn" in name or "mlp" in name)
        ]
        if not projected:
            raise ValueError(f"{type(model).__name__} has no nn.Linear module whose name contains 'attn' or 'mlp'")
        ids = {id(p) for p in projected}
        regular = [p for p in model.parameters() if id(p) not in ids]
        galore_group = {
            "params": projected,
            "rank": self.rank,
            "update_proj_gap": self.update_proj_gap,
            "scale": self.scale,
            "proj_type": self.proj_type,
        }
        groups = ([{"params": regular}] if regular else []) + [galore_group]
        return galore_torch.GaLoreAdamW(groups, lr=self.lr, weight_decay=self.weight_decay, no_deprecation_warning=True)


_OPTKIT_GALORE_OPTIONS = """

    Options
    -------
    rank, update_proj_gap, scale :
        GaLore's r, T and alpha (defaults 128, 200, 0.25).
    proj : {"svd", "randomized", "dct", "random"}
        Basis source of :class:`optkit.projection.Projector`.
    moments : {"keep", "reset", "rotate"}
        What happens to the moments when the basis changes.
    refresh : {"fixed", "adaptive"}
        Refresh every ``update_proj_gap`` steps, or start there and grow the gap while the
        subspace is stable.
    power_iters : int
        Power iterations of the ``"randomized"`` source.
    error_feedback : bool
        Add what the projection dropped at one step to the next gradient (a full-size buffer
        per projected weight).
    target : str
        Which linear weights are projected (``"attn-mlp"``: the paper's choice; ``"all-linear"``;
        or a regular expression over module names), see
        :func:`solvers.lowrank.param_groups.select_linear_modules`; every other parameter trains
        full-rank in the same optimizer.
    layerwise : bool
        Step each parameter during backward (:class:`solvers.lowrank.layerwise.LayerwiseOptimizer`),
        so weight gradients never coexist; incompatible with ``grad_clip``.
    Others: those of :class:`TorchTrainer`.
    """


@dataclass(frozen=True, kw_only=True)
class _OptkitGaLore(_GaLoreOptions):
    """optkit's GaLore optimizers (:mod:`solvers.lowrank`) behind one recipe; options below."""

    # (module of solvers.lowrank, class name) of the optimizer
    optimizer_path: ClassVar[tuple[str, str]] = ("", "")

    proj: str = "svd"
    moments: str = "keep"
    refresh: str = "fixed"
    error_feedback: bool = False
    power_iters: int = 1
    target: str = "attn-mlp"
    layerwise: bool = False

    def validate(self) -> None:
        super().validate()
        check_choice("proj", self.proj, ("svd", "randomized", "dct", "random"))
        check_choice("moments", self.moments, ("keep", "reset", "rotate"))
        check_choice("refresh", self.refresh, ("fixed", "adaptive"))
        if not isinstance(self.target, str) or not self.target:
            raise ValueError(f"target must be 'attn-mlp', 'all-linear' or a regular expression, got {self.target!r}")
        check_int("power_iters", self.power_iters, 0)
        if not isinstance(self.error_feedback, bool):
            raise ValueError(f"error_feedback must be true or false, got {self.error_feedback!r}")
        if not isinstance(self.layerwise, bool):
            raise ValueError(f"layerwise must be true or false, got {self.layerwise!r}")
        if self.layerwise and self.grad_clip is not None:
            raise ValueError("grad_clip needs every gradient at once, which layerwise=True never has; drop one of them")

    def check(self, problem: Problem) -> str | None:
        module = f"{__package__}.{self.optimizer_path[0]}"
        if importlib.util.find_spec(module) is None:
            return f"solver {self.name!r} needs {module}, which is not available"
        return super().check(problem)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        from .param_groups import galore_param_groups

        module, cls_name = self.optimizer_path
        cls = getattr(importlib.import_module(f"{__package__}.{module}"), cls_name)
        groups = galore_param_groups(
            model,
            self.target,
            rank=self.rank,
            update_proj_gap=self.update_proj_gap,
            scale=self.scale,
            proj=self.proj,
            moments=self.moments,
            refresh=self.refresh,
            error_feedback=self.error_feedback,
            power_iters=self.power_iters,
        )
        if not self.layerwise:
            return cls(groups, lr=self.lr, weight_decay=self.weight_decay)
        from .layerwise import LayerwiseOptimizer

        def factory(inner_groups: list[dict]) -> torch.optim.Optimizer:
            return cls(inner_groups, lr=self.lr, weight_decay=self.weight_decay)

        return LayerwiseOptimizer(groups, factory, accumulation_steps=self.accumulation_steps)


@register_solver("galore-adamw")
@dataclass(frozen=True, kw_only=True)
class GaLoreAdamWRecipe(_OptkitGaLore):
    """optkit's GaLoreAdamW (solvers.lowrank.galore_adamw): AdamW moments in a low-rank gradient subspace."""

    optimizer_path: ClassVar[tuple[str, str]] = ("galore_adamw", "GaLoreAdamW")


@register_solver("galore-adamw8bit")
@dataclass(frozen=True, kw_only=True)
class GaLoreAdamW8bitRecipe(_OptkitGaLore):
    """optkit's GaLoreAdamW8bit (solvers.lowrank.galore_adamw8bit): 8-bit moments in a low-rank subspace."""

    optimizer_path: ClassVar[tuple[str, str]] = ("galore_adamw8bit", "GaLoreAdamW8bit")


@register_solver("galore-adafactor")
@dataclass(frozen=True, kw_only=True)
class GaLoreAdafactorRecipe(_OptkitGaLore):
    """optkit's GaLoreAdafactor (solvers.lowrank.galore_adafactor): Adafactor in a low-rank subspace."""

    optimizer_path: ClassVar[tuple[str, str]] = ("galore_adafactor", "GaLoreAdafactor")


for _recipe in (GaLoreAdamWRecipe, GaLoreAdamW8bitRecipe, GaLoreAdafactorRecipe):
    _recipe.__doc__ = (_recipe.__doc__ or "").rstrip() + _OPTKIT_GALORE_OPTIONS

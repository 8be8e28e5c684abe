"""LoRA through Hugging Face peft as a solver: ``lora``, the parameter-efficient baseline of the GaLore comparisons.

The recipe injects LoRA adapters (``peft.inject_adapter_in_model``) into the task's model in
place, freezes every base weight except the model's output layer (a classifier's freshly
initialised head must train), and trains what is left with ``torch.optim.AdamW``. The task's
``loss_fn`` keeps working because the model object is the same, its target ``nn.Linear``
modules replaced by peft's ``lora.Linear`` (``base_layer(x) + (B A x) * alpha / r``). peft and
torch are imported when a run starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from optkit.backend import has_module, optional_import
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.torch_optim import TorchOptimizerSolver
from optkit.training import TrainingTask
from optkit.validation import check_int, check_positive

if TYPE_CHECKING:
    import torch

__all__ = ["LoRA", "lora_target_modules"]


def lora_target_modules(model: torch.nn.Module, target: str) -> list[str]:
    """Full names of the ``nn.Linear`` modules of ``model`` that get adapters.

    Parameters
    ----------
    model : torch.nn.Module
    target : str
        ``"all-linear"``: every ``nn.Linear`` except the output layer (as
        :func:`solvers.lowrank.param_groups.select_linear_modules`). Otherwise comma-separated
        module names, each selecting the modules of that name or ending in ``.<name>``
        (``"query,key,value,dense"`` selects a BERT's attention projections and its dense layers).

    Raises
    ------
    ValueError
        When a name selects no ``nn.Linear`` module (the message lists the model's).
    """
    from solvers.lowrank.param_groups import select_linear_modules

    if target == "all-linear":
        return select_linear_modules(model, "all-linear")
    names = [name.strip() for name in target.split(",") if name.strip()]
    if not names:
        raise ValueError(f"target must be 'all-linear' or comma-separated module names, got {target!r}")
    for name in names:
        select_linear_modules(model, [name])  # raises, naming the model's linear modules, if none match
    return select_linear_modules(model, names)


@register_solver("lora")
@dataclass(frozen=True, kw_only=True)
class LoRA(TorchOptimizerSolver):
    """LoRA adapters (peft) on the target linear layers, AdamW on the adapters and the output layer.

    Options
    -------
    r : int
        Adapter rank, default 8.
    alpha : float
        Scale numerator: the adapter adds ``(B A x) * alpha / r``; default 16.
    target : str
        Which linear layers get adapters, see :func:`lora_target_modules`; default
        ``"all-linear"`` (on a BERT encoder the same 36 layers as ``"query,key,value,dense"``).
    train_head : bool, optional
        Also train the model's output layer (``model.get_output_embeddings()``) fully. Default
        ``None``: when the model has one (a classifier's new head must train); pass false to keep
        a language model's ``lm_head`` frozen, true to require an output layer.
    Others: those of :class:`~optkit.torch_optim.TorchOptimizerSolver` (``lr``, ``weight_decay``
    apply to the trained parameters).

    Notes
    -----
    ``lora_dropout=0`` and peft's default initialisation (``A`` Kaiming-uniform from the run's
    seeded stream, ``B = 0``), so the model's output before the first step is exactly the base
    model's. Frozen weights never get a ``.grad``, so ``peak_mem_mb`` counts all parameters, the
    trained ones' gradients and AdamW's two moments of the trained ones only. Training tasks only:
    the variable of a smooth problem is not a layer. The model is changed in place (``Result.x``
    is the adapted model; ``peft.get_peft_model_state_dict`` extracts the adapters).
    """

    accepts: ClassVar[tuple] = (TrainingTask,)

    r: int = 8
    alpha: float = 16.0
    target: str = "all-linear"
    train_head: bool | None = None

    def validate(self) -> None:
        super().validate()
        check_int("r", self.r, 1)
        check_positive("alpha", self.alpha)
        if not isinstance(self.target, str) or not self.target.strip():
            raise ValueError(f"target must be 'all-linear' or comma-separated module names, got {self.target!r}")
        if self.train_head is not None and not isinstance(self.train_head, bool):
            raise TypeError(
                f"train_head must be true, false or None (the output layer if any), got {self.train_head!r}"
            )

    def check(self, problem: Problem) -> str | None:
        if not has_module("peft"):
            return "solver 'lora' needs peft (pip install peft)"
        return super().check(problem)

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        import torch

        peft = optional_import("peft", "solver 'lora'")
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head = output if self.train_head is not False else None
        if self.train_head and head is None:
            raise ValueError(
                f"train_head=True needs a model with get_output_embeddings(); {type(model).__name__} has none "
                "(pass train_head=false)"
            )
        config = peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            target_modules=lora_target_modules(model, self.target),
        )
        peft.inject_adapter_in_model(config, model)
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
        if head is not None:
            head.requires_grad_(True)
        trained = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(trained, lr=self.lr, weight_decay=self.weight_decay)

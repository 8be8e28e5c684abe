"""Torch optimizers from other libraries as solvers: ``adamw``, ``adam``, ``sgd`` (``torch.optim``),
``adamw8bit`` (bitsandbytes), ``galore-torch`` (the reference GaLore) and ``shampoo`` (pytorch_optimizer).

Each is a :class:`~optkit.torch_optim.TorchOptimizerSolver` that only builds its optimizer, so
it trains a :class:`~optkit.training.TrainingTask` and runs on any smooth or finite-sum problem
(the problem's variable is the one parameter). torch and the libraries are imported when a run
starts, never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from optkit.backend import has_module, optional_import
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.torch_optim import TorchOptimizerSolver
from optkit.training import TrainingTask
from optkit.validation import check_choice, check_int, check_nonnegative, check_positive

if TYPE_CHECKING:
    import torch

__all__ = ["SGD", "Adam", "AdamW", "AdamW8bit", "GaLoreTorch", "Shampoo"]


@register_solver("adamw")
@dataclass(frozen=True, kw_only=True)
class AdamW(TorchOptimizerSolver):
    """``torch.optim.AdamW`` (betas (0.9, 0.999), eps 1e-8) on every parameter: the full-rank baseline.

    Options: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`.
    """

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        import torch

        return torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@register_solver("adam")
@dataclass(frozen=True, kw_only=True)
class Adam(TorchOptimizerSolver):
    """``torch.optim.Adam`` (betas (0.9, 0.999), eps 1e-8); ``weight_decay`` is L2 added to the gradient.

    Options: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`.
    """

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        import torch

        return torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@register_solver("sgd")
@dataclass(frozen=True, kw_only=True)
class SGD(TorchOptimizerSolver):
    """``torch.optim.SGD`` with (optionally Nesterov) momentum; ``weight_decay`` is L2 added to the gradient.

    Options
    -------
    momentum : float
        In [0, 1), default 0.9.
    nesterov : bool
        Nesterov momentum (needs ``momentum > 0``).
    Others: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`.
    """

    momentum: float = 0.9
    nesterov: bool = False

    def validate(self) -> None:
        super().validate()
        if check_nonnegative("momentum", self.momentum) >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be true or false, got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        import torch

        return torch.optim.SGD(
            model.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
        )


@register_solver("adamw8bit")
@dataclass(frozen=True, kw_only=True)
class AdamW8bit(TorchOptimizerSolver):
    """8-bit AdamW from bitsandbytes (``bnb.optim.AdamW8bit``): block-wise quantised moments, CPU or CUDA.

    bitsandbytes 0.50 keeps both Adam moments as ``uint8`` codes with one float32 absmax per block
    of 256 values (dynamic quantisation map), on CUDA and, since 0.4x, on the CPU; tensors with
    fewer than 4096 elements keep float32 moments (its ``min_8bit_size``). Options: those of
    :class:`~optkit.torch_optim.TorchOptimizerSolver`.
    """

    def check(self, problem: Problem) -> str | None:
        if not has_module("bitsandbytes"):
            return "solver 'adamw8bit' needs bitsandbytes (pip install bitsandbytes)"
        return super().check(problem)

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        bnb = optional_import("bitsandbytes", "solver 'adamw8bit'")
        return bnb.optim.AdamW8bit(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def reference_galore_targets(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights the GaLore and Q-GaLore reference scripts project: every ``nn.Linear`` whose module
    name contains ``attn`` or ``mlp`` (a ``ValueError`` when there is none)."""
    import torch

    projected = [
        module.weight
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ("attn" in name or "mlp" in name)
    ]
    if not projected:
        raise ValueError(f"{type(model).__name__} has no nn.Linear module whose name contains 'attn' or 'mlp'")
    return projected


@register_solver("galore-torch")
@dataclass(frozen=True, kw_only=True)
class GaLoreTorch(TorchOptimizerSolver):
    """The official GaLore (``galore_torch.GaLoreAdamW``, jiaweizzhao/GaLore) with the reference's param groups.

    On a training task, as ``torchrun_main.py``: the weights of ``nn.Linear`` modules whose name
    contains ``"attn"`` or ``"mlp"`` form the group ``{"rank", "update_proj_gap", "scale",
    "proj_type"}``; every other parameter (embeddings, norms, output layer) is a plain AdamW group.
    On a smooth problem the variable is that group when it is a matrix (the reference's projector
    needs 2-D gradients) and a plain AdamW group otherwise. The optimizer's own defaults otherwise
    (betas (0.9, 0.999), eps 1e-6, bias correction).

    Options
    -------
    rank, update_proj_gap, scale :
        GaLore's r, T and alpha (defaults 128, 200, 1.0: those of optkit's GaLore recipes, see
        :data:`solvers.lowrank.options.GALORE_OPTIONS`; the paper pre-trains with scale 0.25).
    proj_type : {"std", "reverse_std", "right", "left", "full"}
        The reference projector's side rule.
    Others: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`. ``refresh_s`` is not
    recorded: the reference does not time its SVDs. Its 8-bit variant synchronises CUDA inside
    its step and is not wrapped.
    """

    projects = True

    rank: int = 128
    update_proj_gap: int = 200
    scale: float = 1.0
    proj_type: str = "std"

    def validate(self) -> None:
        super().validate()
        check_int("rank", self.rank, 1)
        check_int("update_proj_gap", self.update_proj_gap, 1)
        check_nonnegative("scale", self.scale)
        check_choice("proj_type", self.proj_type, ("std", "reverse_std", "right", "left", "full"))

    def check(self, problem: Problem) -> str | None:
        if not has_module("galore_torch"):
            return "solver 'galore-torch' needs the galore-torch package (pip install galore-torch)"
        return super().check(problem)

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:

        galore_torch = optional_import("galore_torch", "solver 'galore-torch'")
        if isinstance(problem, TrainingTask):
            projected = reference_galore_targets(model)
        else:
            projected = [model.weight] if model.weight.dim() == 2 else []
        ids = {id(p) for p in projected}
        regular = [p for p in model.parameters() if id(p) not in ids]
        galore_group = {
            "params": projected,
            "rank": self.rank,
            "update_proj_gap": self.update_proj_gap,
            "scale": self.scale,
            "proj_type": self.proj_type,
        }
        groups = ([{"params": regular}] if regular else []) + ([galore_group] if projected else [])
        return galore_torch.GaLoreAdamW(groups, lr=self.lr, weight_decay=self.weight_decay, no_deprecation_warning=True)


@register_solver("shampoo")
@dataclass(frozen=True, kw_only=True)
class Shampoo(TorchOptimizerSolver):
    """Shampoo from pytorch_optimizer 4.1.0 (``pytorch_optimizer.Shampoo``, kozistr/pytorch_optimizer).

    Each parameter of order k keeps one statistic per dimension, ``L_j = matrix_eps * I +
    sum_t G_(j) G_(j)^T`` over the gradients seen (``G_(j)`` the gradient unfolded along
    dimension j), and steps along ``G`` multiplied on every side by ``L_j^(-1/(2k))`` (exact
    SVD roots): on a vector variable (logistic regression) that is full-matrix AdaGrad,
    ``L^(-1/2) g`` with a (d, d) statistic; on a (k, d) softmax weight ``L^(-1/4) G R^(-1/4)``
    with (k, k) and (d, d) statistics. The statistics are never decayed.

    The package's own behaviour, kept as it is:

    - the inverse roots start at zero and are first computed at step ``update_freq``: with
      ``update_freq > 1`` the first ``update_freq - 1`` steps leave the weights unchanged;
    - between recomputations the roots are stale: a new gradient's component outside the
      span of the gradients seen is multiplied by up to ``matrix_eps^(-1/(2k))`` (1000 on a
      vector with the default). Measured on a9a logistic regression (lr 0.1, batches of 128,
      one epoch): objective 0.382 with ``update_freq=1``, 2.32 (above the start's 0.693) with 10;
    - ``momentum`` mixes the new gradient with the *previous preconditioned step*, ``(1 -
      momentum) g + momentum * u_prev``, before the statistics and the preconditioning, so a
      step is preconditioned again at every later step: with stale roots this grows
      geometrically (same a9a run, ``update_freq=10``: objective 1e40 with momentum 0.5 or 0.9),
      and with ``update_freq=1`` it still slowed the run (0.415 at momentum 0.5, 0.511 at 0.9);
    - ``weight_decay`` is L2 added to that gradient (``weight_decouple=False``) or a decoupled
      ``w *= 1 - lr * weight_decay``.

    Options
    -------
    momentum : float
        In [0, 1), default 0 (the package's).
    update_freq : int
        Steps between recomputations of the inverse roots (``preconditioning_compute_steps``),
        >= 1, default 1. Each costs an SVD of every statistic: (d, d) per dimension of size d.
    matrix_eps : float
        The statistics' initial ``matrix_eps * I`` (> 0; default 1e-6, the package's): the
        damping of directions the gradients have not visited.
    weight_decouple : bool
        Decoupled weight decay instead of L2 (default False).
    Others: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`.
    """

    momentum: float = 0.0
    update_freq: int = 1
    matrix_eps: float = 1e-6
    weight_decouple: bool = False

    def validate(self) -> None:
        super().validate()
        if check_nonnegative("momentum", self.momentum) >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        check_int("update_freq", self.update_freq, 1)
        check_positive("matrix_eps", self.matrix_eps)
        if not isinstance(self.weight_decouple, bool):
            raise TypeError(f"weight_decouple must be true or false, got {self.weight_decouple!r}")

    def check(self, problem: Problem) -> str | None:
        if not has_module("pytorch_optimizer"):
            return "solver 'shampoo' needs pytorch_optimizer 4.1.0 (pip install 'optkit[curvature]')"
        return super().check(problem)

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        pytorch_optimizer = optional_import("pytorch_optimizer", "solver 'shampoo'")
        return pytorch_optimizer.Shampoo(
            model.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            weight_decouple=self.weight_decouple,
            preconditioning_compute_steps=self.update_freq,
            matrix_eps=self.matrix_eps,
        )

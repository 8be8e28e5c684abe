"""The official Q-GaLore (``q-galore-torch`` 1.0, VITA-Group/Q-GaLore) as the solver ``q-galore-torch``.

The package ships two optimizers and no quantised layer (``QGaLoreLinear`` lives in the repository's
training scripts). Neither runs on a CPU-only torch with bitsandbytes 0.50.2, measured on three
steps of a 256 x 64 linear layer:

* ``QGaLoreAdamW8bit`` (real INT8 weights) fails on any device at its first parameter:
  ``KeyError: 'percentile_clipping'`` at ``q_galore_torch/q_galore_adamw8bit.py`` line 143
  (``update_step`` reads a key bitsandbytes' ``get_config`` no longer fills).
* ``QGaLoreAdamW8bit_simulate`` (fake-quantised float weights, the path the reference uses under
  DDP) calls ``torch.cuda.synchronize()`` in every step, line 73 of
  ``q_galore_torch/q_galore_adamw8bit_simulate.py``: ``AssertionError: Torch not compiled with
  CUDA enabled`` on a CPU-only torch.

So the solver wraps the simulation path and needs CUDA (its :meth:`QGaLoreTorch.check` says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from optkit.backend import has_module, optional_import
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.torch_optim import TorchOptimizerSolver
from optkit.training import TrainingTask
from optkit.validation import check_choice, check_int, check_nonnegative

from .torch_optimizers import reference_galore_targets

if TYPE_CHECKING:
    import torch

__all__ = ["CPU_FAILURE", "QGaLoreTorch"]

#: Why the package cannot run without CUDA (see the module docstring).
CPU_FAILURE = (
    "q_galore_torch/q_galore_adamw8bit_simulate.py line 73 calls torch.cuda.synchronize() in every step "
    "(AssertionError: Torch not compiled with CUDA enabled), and its real-INT8 QGaLoreAdamW8bit fails with "
    "bitsandbytes 0.50.2 (KeyError: 'percentile_clipping', q_galore_adamw8bit.py line 143)"
)


@register_solver("q-galore-torch")
@dataclass(frozen=True, kw_only=True)
class QGaLoreTorch(TorchOptimizerSolver):
    """The official Q-GaLore's simulation path (``q_galore_torch.QGaLoreAdamW8bit_simulate``), with its param groups.

    On a training task, as the reference's ``run_pretrain.py``: the weights of ``nn.Linear``
    modules whose name contains ``"attn"`` or ``"mlp"`` form the group ``{"rank",
    "update_proj_gap", "scale", "proj_type": "std", "quant": True, "quant_n_bit",
    "quant_group_size", "cos_threshold": 0.4, "gamma_proj": 2, "queue_size": 5}`` and carry the
    attributes ``group_size`` and ``stochastic_round`` by which the optimizer fake-quantises them to
    8 bits after each step (the reference's ``QLinear``); every other parameter is a plain group.
    Training tasks only, on CUDA (see the module docstring for the CPU failures).

    Options
    -------
    rank, update_proj_gap, scale :
        GaLore's r, T and alpha (defaults 128, 200, 1.0, those of optkit's GaLore recipes).
    proj_bits, proj_group_size :
        The projection's quantisation (Q-GaLore's 4 bits in groups of 256).
    weight_group_size : int
        Weight values per fake-quantisation group (256); every projected weight's size must be a
        multiple of it (the reference asserts so).
    stochastic_round : bool
        Stochastic rounding of the fake-quantised weights (default).
    Others: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`. ``refresh_s`` is not
    recorded: the reference does not time its SVDs.
    """

    accepts: ClassVar[tuple] = (TrainingTask,)
    projects = True

    rank: int = 128
    update_proj_gap: int = 200
    scale: float = 1.0
    proj_bits: int = 4
    proj_group_size: int = 256
    weight_group_size: int = 256
    stochastic_round: bool = True

    def validate(self) -> None:
        super().validate()
        check_int("rank", self.rank, 1)
        check_int("update_proj_gap", self.update_proj_gap, 1)
        check_nonnegative("scale", self.scale)
        check_choice("proj_bits", self.proj_bits, (4, 8))
        check_int("proj_group_size", self.proj_group_size, 1)
        check_int("weight_group_size", self.weight_group_size, 1)
        if not isinstance(self.stochastic_round, bool):
            raise TypeError(f"stochastic_round must be true or false, got {self.stochastic_round!r}")

    def check(self, problem: Problem) -> str | None:
        if not has_module("q_galore_torch"):
            return "solver 'q-galore-torch' needs the q-galore-torch package (pip install q-galore-torch)"
        import torch

        if not torch.cuda.is_available():
            return f"solver 'q-galore-torch' needs CUDA: {CPU_FAILURE}"
        return super().check(problem)

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:

        q_galore_torch = optional_import("q_galore_torch", "solver 'q-galore-torch'")
        projected = reference_galore_targets(model)
        for weight in projected:
            if weight.numel() % self.weight_group_size:
                raise ValueError(
                    f"weight_group_size={self.weight_group_size} must divide every projected weight's size "
                    f"(the reference asserts it); one has {weight.numel()} values"
                )
            # the attributes the reference's QLinear sets: the optimizer fake-quantises such weights
            weight.group_size = self.weight_group_size
            weight.stochastic_round = self.stochastic_round
        ids = {id(p) for p in projected}
        regular = [p for p in model.parameters() if id(p) not in ids]
        galore_group = {
            "params": projected,
            "rank": self.rank,
            "update_proj_gap": self.update_proj_gap,
            "scale": self.scale,
            "proj_type": "std",
            "quant": True,
            "quant_n_bit": self.proj_bits,
            "quant_group_size": self.proj_group_size,
            "cos_threshold": 0.4,
            "gamma_proj": 2,
            "queue_size": 5,
        }
        groups = ([{"params": regular}] if regular else []) + [galore_group]
        return q_galore_torch.QGaLoreAdamW8bit_simulate(groups, lr=self.lr, weight_decay=self.weight_decay)

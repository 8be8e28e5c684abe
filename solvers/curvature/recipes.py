"""The M-FAC optimizer registered as the solver ``mfac``.

A :class:`~optkit.torch_optim.TorchOptimizerSolver` recipe: it trains a
:class:`~optkit.training.TrainingTask` and runs on any smooth or finite-sum problem (the
problem's variable is the one parameter), like ``adam`` and ``sgd``. torch is imported when a
run starts, never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.torch_optim import TorchOptimizerSolver
from optkit.validation import check_int, check_nonnegative, check_positive

if TYPE_CHECKING:
    import torch

__all__ = ["MFACRecipe"]


@register_solver("mfac")
@dataclass(frozen=True, kw_only=True)
class MFACRecipe(TorchOptimizerSolver):
    """M-FAC (:class:`solvers.curvature.MFAC`): steps along the inverse empirical Fisher of the last gradients.

    Options
    -------
    num_grads : int
        ``m``, the window of gradients (default 1024, the reference's). Memory ``m · d``.
    damp : float
        ``λ > 0`` (default 1e-5, the reference's). Along directions the window has not seen the
        step is ``lr/λ`` times the gradient: choose ``lr`` with ``λ`` (docs/methods/mfac.md).
    momentum : float
        In [0, 1) (default 0).
    sparse : bool
        Keep the weights that are exactly zero at the start frozen at zero (a pruned model).
    Others: those of :class:`~optkit.torch_optim.TorchOptimizerSolver`; ``weight_decay`` is L2
    added to the gradient before preconditioning, as in the reference.
    """

    num_grads: int = 1024
    damp: float = 1e-5
    momentum: float = 0.0
    sparse: bool = False

    def validate(self) -> None:
        super().validate()
        check_int("num_grads", self.num_grads, 1)
        check_positive("damp", self.damp)
        if check_nonnegative("momentum", self.momentum) >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not isinstance(self.sparse, bool):
            raise TypeError(f"sparse must be true or false, got {self.sparse!r}")

    def make_optimizer(self, model: torch.nn.Module, problem: Problem) -> torch.optim.Optimizer:
        from .mfac_optimizer import MFAC

        return MFAC(
            model.parameters(), lr=self.lr, num_grads=self.num_grads, damp=self.damp, momentum=self.momentum,
            weight_decay=self.weight_decay, sparse=self.sparse,
        )

"""What every GaLore optimizer shares: group options, projector construction, projection of one gradient.

A GaLore optimizer keeps GaLore's configuration in its param groups (``rank`` switches
projection on for a group; ``None`` trains it full-rank) as plain numbers and strings, so
``state_dict()`` stays loadable with ``torch.load(weights_only=True)``. The projector of a
group is rebuilt from those options (it is an immutable :class:`optkit.projection.Projector`);
each parameter's projector state is a dict of tensors and numbers in ``state[p]["projector"]``.
"""

from __future__ import annotations

from typing import Any

import torch

from optkit.projection import AdaptiveGap, FixedGap, Projected, Projector
from optkit.torch_optim import restore_state_dtypes

from .options import GALORE_DEFAULTS, check_galore_options

__all__ = [
    "GaLoreMixin",
    "check_adam_options",
    "check_galore_group",
    "galore_defaults",
]


class GaLoreMixin:
    """Projection plumbing for a ``torch.optim.Optimizer`` subclass (GaLore's "two lines" in the step).

    Attributes
    ----------
    projector_refresh_seconds : float
        Cumulative wall time spent rebuilding projector bases (CUDA-synchronised), for benchmarks.
    """

    projector_refresh_seconds: float

    def _init_galore(self) -> None:
        self.projector_refresh_seconds = 0.0
        self._projectors: dict[tuple, Projector] = {}
        # a stable index per parameter (the same on every rank) seeds the randomized sources
        self._param_keys: dict[torch.Tensor, int] = {}
        ordinal = 0
        for group in self.param_groups:
            check_galore_group(group)
            if group["rank"] is not None:
                self.projector_for(group)
            for p in group["params"]:
                if p.is_complex():
                    raise ValueError("GaLore optimizers do not support complex parameters")
                self._param_keys[p] = ordinal
                ordinal += 1

    @torch.no_grad()
    def step(self, closure=None):
        """One step on every parameter with a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._step_parameter(group, p)
        return loss

    def begin_step(self, group: dict[str, Any], p: torch.Tensor) -> tuple[dict, int, Projected | None, torch.Tensor]:
        """The common start of a parameter's step: its state, the step index (0 first), the
        projection (``None`` for a full-rank parameter) and the gradient to feed the moments."""
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
        step = int(state["step"])
        if not self.uses_projection(group, p):
            return state, step, None, p.grad
        grad = p.grad
        if group["error_feedback"]:
            grad = grad + state["error"] if "error" in state else grad
        projected = self.project_gradient(group, p, grad, step)
        if group["error_feedback"]:
            # what the projection dropped is added to the next gradient (MicroAdam, DCT-AdamW)
            state["error"] = grad - self.projector_for(group).lift(state["projector"], projected.low)
        return state, step, projected, projected.low

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, keeping the dtypes the state was saved with.

        torch casts every state tensor to its parameter's dtype: int32 DCT indices, uint8
        8-bit moments and float32 moments of half-precision parameters would all change.
        """
        super().load_state_dict(state_dict)
        restore_state_dtypes(self, state_dict)

    def projector_for(self, group: dict[str, Any]) -> Projector:
        """The (validated, cached) projector described by ``group``'s GaLore options."""
        key = tuple(group[k] for k in GALORE_DEFAULTS)
        if key not in self._projectors:
            gap = group["update_proj_gap"]
            refresh = {"fixed": FixedGap, "adaptive": AdaptiveGap}[group["refresh"]]
            self._projectors[key] = Projector(
                rank=group["rank"],
                source=group["proj"],
                side=group["proj_side"],
                refresh=refresh(gap=gap),
                moments=group["moments"],
                scale=group["scale"],
                oversample=group["oversample"],
                power_iters=group["power_iters"],
                seed=group["proj_seed"],
            )
        return self._projectors[key]

    def uses_projection(self, group: dict[str, Any], p: torch.Tensor) -> bool:
        """Whether ``p`` is projected: its group has a rank and ``p`` is a matrix (others train full-rank)."""
        return group["rank"] is not None and p.dim() == 2

    def project_gradient(self, group: dict[str, Any], p: torch.Tensor, grad: torch.Tensor, step: int) -> Projected:
        """Project ``grad`` of ``p`` (creating its projector state on first use); times refreshes."""
        projector = self.projector_for(group)
        state = self.state[p]
        if "projector" not in state:
            state["projector"] = projector.init_state(tuple(p.shape), key=self._param_keys[p])
        projected = projector.project(state["projector"], grad, step)
        self.projector_refresh_seconds += projected.refresh_s
        return projected

    def project_back(self, group: dict[str, Any], p: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """The update ``low`` in ``p``'s shape (scaled by the group's ``scale``)."""
        return self.projector_for(group).project_back(self.state[p]["projector"], low)

    def transport(self, group: dict[str, Any], p: torch.Tensor, projected: Projected, moment, *, second=False):
        """``moment`` moved into the new basis by the group's ``moments`` rule (no-op without a change)."""
        return self.projector_for(group).transport(projected, self.state[p]["projector"], moment, second=second)

    def state_nbytes(self) -> dict[str, int]:
        """Bytes held by the optimizer state, split into ``"moments"`` and ``"projector"`` storage."""
        moments = projector = 0
        for state in self.state.values():
            for key, value in state.items():
                if key == "projector":
                    projector += sum(t.numel() * t.element_size() for t in value.values() if torch.is_tensor(t))
                elif torch.is_tensor(value) and value.dim() > 0:
                    moments += value.numel() * value.element_size()
        return {"moments": moments, "projector": projector}


def galore_defaults(galore: dict[str, Any], **base: Any) -> dict[str, Any]:
    """An optimizer's defaults: ``base`` plus the GaLore options of
    :data:`~solvers.lowrank.options.GALORE_DEFAULTS` (``TypeError`` naming unknown ones)."""
    unknown = set(galore) - set(GALORE_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown GaLore options {sorted(unknown)}; expected some of {list(GALORE_DEFAULTS)}")
    return {**base, **GALORE_DEFAULTS, **galore}


def check_adam_options(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Validate AdamW's hyperparameters (errors name the option)."""
    if not 0.0 <= lr:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


def check_galore_group(group: dict[str, Any]) -> None:
    """Validate a group's GaLore options before any work (errors name the option)."""
    check_galore_options({name: group[name] for name in GALORE_DEFAULTS})

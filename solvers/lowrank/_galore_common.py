"""What every GaLore optimizer shares: group options, projector construction, projection of one gradient.

A GaLore optimizer keeps GaLore's configuration in its param groups (``rank`` switches
projection on for a group; ``None`` trains it full-rank) as plain numbers and strings, so
``state_dict()`` stays loadable with ``torch.load(weights_only=True)``. The projector of a
group is rebuilt from those options (it is an immutable :class:`optkit.projection.Projector`);
each parameter's projector state is a dict of tensors and numbers in ``state[p]["projector"]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from optkit.projection import AdaptiveGap, FixedGap, Projected, Projector

__all__ = ["GALORE_DEFAULTS", "GaLoreMixin", "check_galore_group"]

GALORE_DEFAULTS: dict[str, Any] = {
    "rank": None,
    "update_proj_gap": 200,
    "scale": 1.0,
    "proj": "svd",
    "proj_side": "auto",
    "moments": "keep",
    "refresh": "fixed",
    "power_iters": 1,
    "oversample": 8,
    "proj_seed": 0,
}


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

    def projector_for(self, group: dict[str, Any]) -> Projector:
        """The (validated, cached) projector described by ``group``'s GaLore options."""
        key = tuple(group[k] for k in GALORE_DEFAULTS)
        if key not in self._projectors:
            gap = group["update_proj_gap"]
            refresh = {"fixed": FixedGap, "adaptive": AdaptiveGap}.get(group["refresh"])
            if refresh is None:
                raise ValueError(f"refresh must be 'fixed' or 'adaptive', got {group['refresh']!r}")
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


def check_galore_group(group: dict[str, Any]) -> None:
    """Validate a group's GaLore options before any work (errors name the option)."""
    rank = group["rank"]
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise ValueError(f"rank must be a positive integer (or None for full-rank), got {rank!r}")
    gap = group["update_proj_gap"]
    if isinstance(gap, bool) or not isinstance(gap, int) or gap <= 0:
        raise ValueError(f"update_proj_gap must be a positive integer, got {gap!r}")
    if not (isinstance(group["scale"], (int, float)) and 0 < group["scale"] < math.inf):
        raise ValueError(f"scale must be a positive finite number, got {group['scale']!r}")

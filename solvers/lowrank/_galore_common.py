"""What every GaLore optimizer shares: group options, projector construction, projection of one gradient.

A GaLore optimizer keeps GaLore's configuration in its param groups (``rank`` switches
projection on for a group; ``None`` trains it full-rank) as plain numbers and strings, so
``state_dict()`` stays loadable with ``torch.load(weights_only=True)``. The projector of a
group is rebuilt from those options (it is an immutable :class:`optkit.projection.Projector`);
each parameter's projector state is a dict of tensors and numbers in ``state[p]["projector"]``.

FSDP2 parameters (``DTensor``s placed ``(Shard(0),)``) step on their local rows through
:mod:`solvers.lowrank._sharded`: the optimizer's step code runs unchanged on plain local
tensors, and the state quantities indexed by the weight's rows are kept as DTensors of the
weight's placement between steps (so ``torch.distributed.checkpoint`` saves each rank's shard).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from optkit.projection import LEFT, AdaptiveGap, FixedGap, Projected, Projector
from optkit.torch_optim import restore_state_dtypes

from ._sharded import RowShard, is_dtensor, lift_rows, project_rows, row_shard_of
from .options import GALORE_DEFAULTS, check_galore_options

__all__ = [
    "GaLoreMixin",
    "check_adam_options",
    "check_galore_group",
    "galore_defaults",
]


@dataclass(frozen=True)
class _LocalStep:
    """A sharded parameter during its step: the DTensor, its rows, and its local gradient."""

    param: torch.Tensor
    shard: RowShard
    grad: torch.Tensor


class GaLoreMixin:
    """Projection plumbing for a ``torch.optim.Optimizer`` subclass (GaLore's "two lines" in the step).

    A subclass names in ``row_state_keys`` the state tensors indexed like its (projected)
    gradient's rows; under FSDP2 they are sharded with the weight unless the projection is
    on the left (then the projected gradient, and they, are replicated). ``supports_fsdp2 =
    False`` makes construction over FSDP2 parameters an error.

    Attributes
    ----------
    projector_refresh_seconds : float
        Cumulative wall time spent rebuilding projector bases (CUDA-synchronised), for benchmarks.
    """

    projector_refresh_seconds: float
    row_state_keys: tuple[str, ...] = ()
    supports_fsdp2: bool = True
    fsdp2_alternatives: str = ""

    def _init_galore(self) -> None:
        self.projector_refresh_seconds = 0.0
        self._projectors: dict[tuple, Projector] = {}
        # a stable index per parameter (the same on every rank) seeds the randomized sources
        self._param_keys: dict[torch.Tensor, int] = {}
        self._row_shards: dict[torch.Tensor, RowShard] = {}
        self._local_steps: dict[torch.Tensor, _LocalStep] = {}
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
                shard = row_shard_of(p)
                if shard is not None:
                    if not self.supports_fsdp2:
                        raise ValueError(
                            f"{type(self).__name__} does not support FSDP2-sharded (DTensor) parameters: "
                            f"{self.fsdp2_alternatives}"
                        )
                    self._row_shards[p] = shard

    @torch.no_grad()
    def step(self, closure=None):
        """One step on every parameter with a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                shard = self._row_shards.get(p)
                if shard is None:
                    self._step_parameter(group, p)
                else:
                    self._step_sharded(group, p, shard)
        return loss

    def _step_parameter(self, group: dict[str, Any], p: torch.Tensor) -> None:
        """The step of one parameter: :meth:`begin_step`, then the subclass's ``adam_step`` on ``p`` itself
        (an optimizer with another update, such as Adafactor's, overrides this)."""
        state, step, projected, low = self.begin_step(group, p)
        self.adam_step(group, p, state, step, projected, low, p)

    def set_param_key(self, p: torch.Tensor, key: int) -> None:
        """Seed ``p``'s projector with ``key`` (by default its index among this optimizer's parameters).

        A wrapper that gives each parameter its own optimizer (:class:`LayerwiseOptimizer`) sets the
        parameter's index among all the parameters it trains, so the seeded sources (``randomized``,
        ``random``) draw what one optimizer over all of them draws. Only before ``p``'s first step.
        """
        if "projector" in self.state.get(p, {}):
            raise ValueError("set_param_key after the parameter's first step: its projector is already seeded")
        self._param_keys[p] = int(key)

    def _step_sharded(self, group: dict[str, Any], p: torch.Tensor, shard: RowShard) -> None:
        """The step of an FSDP2 parameter, run by ``_step_parameter`` on its local rows."""
        if not is_dtensor(p.grad) or tuple(p.grad.placements) != shard.placements:
            raise ValueError(
                f"the gradient of a DTensor parameter placed {shard.placements} must be a DTensor of the same "
                f"placement, got {type(p.grad).__name__}"
            )
        state = self.state[p]
        sharded = {key: value for key, value in state.items() if is_dtensor(value)}
        unwrapped = {key: value.to_local() for key, value in sharded.items()}
        state.update(unwrapped)
        local = p.to_local()
        self._local_steps[local] = _LocalStep(p, shard, p.grad.to_local())
        try:
            self._step_parameter(group, local)
        finally:
            del self._local_steps[local]
            projector_state = state.get("projector")
            row_keys = ("error",)
            if projector_state is None or projector_state["side"] != LEFT:
                row_keys += self.row_state_keys
            for key in row_keys + tuple(key for key in sharded if key not in row_keys):
                if key not in state:
                    continue
                # a quantity updated in place keeps its DTensor; a new one (first step, transport) is wrapped
                state[key] = sharded[key] if state[key] is unwrapped.get(key) else shard.wrap(state[key])

    def _state_of(self, p: torch.Tensor) -> dict[str, Any]:
        local = self._local_steps.get(p)
        return self.state[p if local is None else local.param]

    def rows_shard(self, p: torch.Tensor, state: dict[str, Any]) -> RowShard | None:
        """The :class:`RowShard` along which ``p``'s projected gradient is split across ranks (FSDP2
        with no projection or a right-side one), else ``None`` (unsharded, or replicated on the left side)."""
        local = self._local_steps.get(p)
        if local is None or ("projector" in state and state["projector"]["side"] == LEFT):
            return None
        return local.shard

    def weight_shard(self, p: torch.Tensor) -> RowShard | None:
        """The :class:`RowShard` of the weight ``p`` under FSDP2, ``None`` when unsharded."""
        local = self._local_steps.get(p)
        return None if local is None else local.shard

    def begin_step(
        self, group: dict[str, Any], p: torch.Tensor, grad: torch.Tensor | None = None
    ) -> tuple[dict, int, Projected | None, torch.Tensor]:
        """The common start of a parameter's step: its state, the step index (0 first), the
        projection (``None`` for a full-rank parameter) and the gradient to feed the moments.

        ``grad`` replaces ``p.grad`` as the gradient projected (with error feedback): the gradient of
        another quantity of ``p``'s shape that a subclass steps, such as GradNormLoRP's direction."""
        local = self._local_steps.get(p)
        if grad is None:
            grad = p.grad if local is None else local.grad
        if grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        state = self._state_of(p)
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
        step = int(state["step"])
        if not self.uses_projection(group, p):
            return state, step, None, grad
        if group["error_feedback"]:
            grad = grad + state["error"] if "error" in state else grad
        projected = self.project_gradient(group, p, grad, step)
        if group["error_feedback"]:
            # what the projection dropped is added to the next gradient (MicroAdam, DCT-AdamW)
            projector = self.projector_for(group)
            if local is None:
                lifted = projector.lift(state["projector"], projected.low)
            else:
                lifted = lift_rows(projector, state["projector"], local.shard, projected.low)
            state["error"] = grad - lifted
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
                storage={None: "dense", 8: "int8", 4: "int4"}[group["proj_bits"]],
                storage_group=group["proj_group_size"],
            )
        return self._projectors[key]

    def uses_projection(self, group: dict[str, Any], p: torch.Tensor) -> bool:
        """Whether ``p`` is projected: its group has a rank and ``p`` is a matrix (others train full-rank)."""
        return group["rank"] is not None and p.dim() == 2

    def project_gradient(self, group: dict[str, Any], p: torch.Tensor, grad: torch.Tensor, step: int) -> Projected:
        """Project ``grad`` of ``p`` (creating its projector state on first use); times refreshes."""
        projector = self.projector_for(group)
        state = self._state_of(p)
        local = self._local_steps.get(p)
        if "projector" not in state:
            param = p if local is None else local.param
            state["projector"] = projector.init_state(tuple(param.shape), key=self._param_keys[param])
        if local is None:
            projected = projector.project(state["projector"], grad, step)
        else:
            projected = project_rows(projector, state["projector"], local.shard, grad, step)
        self.projector_refresh_seconds += projected.refresh_s
        return projected

    def project_back(self, group: dict[str, Any], p: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """The update ``low`` in ``p``'s shape (scaled by the group's ``scale``); under FSDP2, ``p``'s local rows."""
        projector, local = self.projector_for(group), self._local_steps.get(p)
        if local is None:
            return projector.project_back(self.state[p]["projector"], low)
        full = lift_rows(projector, self._state_of(p)["projector"], local.shard, low)
        return full * projector.scale if projector.scale != 1.0 else full

    def transport(self, group: dict[str, Any], p: torch.Tensor, projected: Projected, moment, *, second=False):
        """``moment`` moved into the new basis by the group's ``moments`` rule (no-op without a change)."""
        return self.projector_for(group).transport(projected, self._state_of(p)["projector"], moment, second=second)

    def state_nbytes(self) -> dict[str, int]:
        """Bytes held by the optimizer state on this rank, split into ``"moments"`` and ``"projector"`` storage
        (a sharded quantity counts its local shard)."""

        def nbytes(t: torch.Tensor) -> int:
            t = t.to_local() if is_dtensor(t) else t
            return t.numel() * t.element_size()

        moments = projector = 0
        for state in self.state.values():
            for key, value in state.items():
                if key == "projector":
                    projector += sum(nbytes(t) for t in value.values() if torch.is_tensor(t))
                elif torch.is_tensor(value) and value.dim() > 0:
                    moments += nbytes(value)
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

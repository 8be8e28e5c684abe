"""GaLoreAdafactor: Adafactor (Shazeer & Stern, ICML 2018) on low-rank projections of the weight gradients."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from ._galore_common import GaLoreMixin, galore_defaults
from ._sharded import RowShard

__all__ = ["GaLoreAdafactor"]

_HALF = (torch.float16, torch.bfloat16)


class GaLoreAdafactor(GaLoreMixin, torch.optim.Optimizer):
    """Adafactor whose moments live in a low-rank subspace of each weight gradient.

    The step is ``transformers.optimization.Adafactor``'s, operation for operation, applied
    to the projected gradient ``R = Bᵀ G`` (or ``G B``) as galore-torch's ``GaLoreAdafactor``
    does: factored second moment (row and column means of ``R² + eps[0]``) with the decay
    ``β̂₂ₜ = 1 − t^decay_rate``, update ``U = R / √V̂`` clipped to RMS ``clip_threshold``,
    times the learning rate, optionally averaged with ``beta1``, then projected back
    (times ``scale``): ``W ← W − lr·weight_decay·W − scale · B U``. With ``rank`` at or
    above the projected dimension every step is bit for bit the one of
    ``transformers.optimization.Adafactor`` with the same options.

    Parameters
    ----------
    params : iterable of tensors or dicts
        Parameters or param groups; any option below may be set per group. A group whose
        ``rank`` is ``None`` (the default) is plain Adafactor; in a projected group,
        parameters that are not 2-D train full-rank.
    lr : float or None
        External learning rate (required). ``None`` only with ``relative_step=True``, as in
        HF's Adafactor.
    eps : (float, float)
        Added to the squared gradient, and the floor of the parameter RMS
        (``scale_parameter``).
    clip_threshold : float
        Threshold on the RMS of the unscaled update.
    decay_rate : float
        Exponent ``c ≤ 0`` of the second-moment decay ``β̂₂ₜ = 1 − t^c``.
    beta1 : float or None
        First-moment coefficient; ``None`` (the default) keeps no first moment. Per the
        GaLore authors (GaLore#8), projecting before Adafactor's factorisation approximates
        the second moment twice, and GaLore-Adafactor mainly helps with ``beta1`` on.
    weight_decay : float
        Multiplies ``lr`` in ``W ← W (1 − lr·weight_decay)`` (HF's form).
    scale_parameter : bool
        Multiply the learning rate by ``max(eps[1], RMS(W))`` (the full weight's RMS).
        Off by default, as HF's GaLore integration forces.
    relative_step : bool
        Learning rate ``min(1e-2, 1/√t)`` (or ``1e-6·t`` with ``warmup_init``) instead of
        ``lr``. Off by default, as HF's GaLore integration forces.
    warmup_init : bool
        Needs ``relative_step``.
    rank, update_proj_gap, scale, proj, proj_side, moments, refresh, power_iters, oversample, proj_seed, error_feedback
        GaLore options, as in :class:`solvers.lowrank.galore_adamw.GaLoreAdamW`.

    Notes
    -----
    ``moments`` on a basis change: the first moment follows the rule through
    :meth:`transport`. The factored second moment keeps only the row and column means of
    ``V``; a change of basis mixes the projected index, and moving the other factor would
    need the entries of ``V`` that the factorisation dropped (on top of the ``R∘R``
    approximation of a rotated second moment, and of the projection itself, GaLore#8). So
    ``"rotate"`` and ``"reset"`` reset the row and column factors by restarting the decay
    clock ``t``: since ``β̂₂,₁ = 0``, the next step rebuilds them from the first gradient in
    the new basis alone, without the cold-start bias a reset causes in Adam. ``"keep"``
    keeps them, and the clock.

    State per projected parameter: ``exp_avg`` (projected shape, only with ``beta1``),
    ``exp_avg_sq_row`` and ``exp_avg_sq_col`` (``(r,)`` and ``(n,)``, or ``(m,)`` and
    ``(r,)``), ``step``, ``moment_origin`` (step of the last second-moment restart) and the
    projector's dict. Full-rank parameters with fewer than two dimensions keep an unfactored
    ``exp_avg_sq``. Moments are float32 for half-precision parameters, else the parameter's
    dtype. CPU and CUDA.

    FSDP2 (``fully_shard``) parameters are accepted as they are, with the same result as
    unsharded training: state indexed by rows is sharded with the weight, and the statistics
    over a whole row-sharded tensor (column means, the mean of the row factor, the update's
    RMS, the weight's RMS) are all-reduced.
    """

    row_state_keys = ("exp_avg", "exp_avg_sq_row", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | None,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        scale_parameter: bool = False,
        relative_step: bool = False,
        warmup_init: bool = False,
        **galore: Any,
    ) -> None:
        if lr is None and not relative_step:
            raise ValueError("lr is required unless relative_step=True")
        if lr is not None and relative_step:
            raise ValueError("lr must be None with relative_step=True (the step size is computed)")
        if lr is not None and not lr >= 0.0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if warmup_init and not relative_step:
            raise ValueError("warmup_init=True requires relative_step=True")
        if len(eps) != 2 or not (eps[0] >= 0.0 and eps[1] >= 0.0):
            raise ValueError(f"eps must be two non-negative numbers, got {eps!r}")
        if not clip_threshold > 0.0:
            raise ValueError(f"clip_threshold must be > 0, got {clip_threshold!r}")
        if not decay_rate <= 0.0:
            raise ValueError(f"decay_rate must be <= 0, got {decay_rate!r}")
        if beta1 is not None and not 0.0 <= beta1 < 1.0:
            raise ValueError(f"beta1 must be None or in [0, 1), got {beta1!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        defaults = galore_defaults(
            galore,
            lr=lr,
            eps=tuple(eps),
            clip_threshold=clip_threshold,
            decay_rate=decay_rate,
            beta1=beta1,
            weight_decay=weight_decay,
            scale_parameter=scale_parameter,
            relative_step=relative_step,
            warmup_init=warmup_init,
        )
        super().__init__(params, defaults)
        self._init_galore()

    @staticmethod
    def _rms(tensor: torch.Tensor, shard: RowShard | None = None) -> torch.Tensor:
        """RMS of ``tensor``, or of the whole row-sharded tensor of which ``tensor`` is this rank's rows."""
        if shard is not None:
            return shard.rms(tensor)
        return tensor.norm(2) / (tensor.numel() ** 0.5)

    @staticmethod
    def _lr(group: dict[str, Any], step: int, weight: torch.Tensor, shard: RowShard | None = None) -> float:
        lr = group["lr"]
        if group["relative_step"]:
            min_step = 1e-6 * step if group["warmup_init"] else 1e-2
            lr = min(min_step, 1.0 / math.sqrt(step))
        if group["scale_parameter"]:
            lr = max(group["eps"][1], GaLoreAdafactor._rms(weight, shard)) * lr
        return lr

    def _step_parameter(self, group: dict[str, Any], p: torch.Tensor) -> None:
        # project in the gradient's dtype (the basis stays in the parameter's), compute in float32 like HF
        state, step, projected, low = self.begin_step(group, p)
        if low.dtype in _HALF:
            low = low.float()
        factored, beta1 = low.dim() >= 2, group["beta1"]
        if "moment_origin" not in state:
            if beta1 is not None:
                state["exp_avg"] = torch.zeros_like(low)
            if factored:
                state["exp_avg_sq_row"] = torch.zeros(low.shape[:-1]).to(low)
                state["exp_avg_sq_col"] = torch.zeros(low.shape[:-2] + low.shape[-1:]).to(low)
            else:
                state["exp_avg_sq"] = torch.zeros_like(low)
            state["moment_origin"] = 0
        elif projected is not None and projected.changed:
            if beta1 is not None:
                state["exp_avg"] = self.transport(group, p, projected, state["exp_avg"])
            if group["moments"] != "keep":
                # restarting the decay clock resets the factors: β̂₂ = 0 at its first step
                state["moment_origin"] = step
        state["step"] += 1

        weight = p.float() if p.dtype in _HALF else p
        lr = self._lr(group, step + 1, weight, self.weight_shard(p))
        # under FSDP2 with row-sharded moments, means over rows and the RMS span every rank's rows
        rows = self.rows_shard(p, state)
        # the decay clock counts the steps since the second moment was last (re)started
        beta2t = 1.0 - math.pow(step + 1 - state["moment_origin"], group["decay_rate"])
        update = (low**2) + group["eps"][0]
        if factored:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(beta2t).add_(update.mean(dim=-1), alpha=(1.0 - beta2t))
            col_mean = update.mean(dim=-2) if rows is None else rows.mean_rows(update)
            col.mul_(beta2t).add_(col_mean, alpha=(1.0 - beta2t))
            row_mean = row.mean(dim=-1, keepdim=True) if rows is None else rows.mean(row)
            r_factor = (row / row_mean).rsqrt_().unsqueeze(-1)
            update = torch.mul(r_factor, col.unsqueeze(-2).rsqrt())
            update.mul_(low)
        else:
            exp_avg_sq = state["exp_avg_sq"]
            exp_avg_sq.mul_(beta2t).add_(update, alpha=(1.0 - beta2t))
            update = exp_avg_sq.rsqrt().mul_(low)
        update.div_((self._rms(update, rows) / group["clip_threshold"]).clamp_(min=1.0))
        update.mul_(lr)
        if beta1 is not None:
            exp_avg = state["exp_avg"]
            exp_avg.mul_(beta1).add_(update, alpha=(1 - beta1))
            update = exp_avg
        if projected is not None:
            update = self.project_back(group, p, update)
        if group["weight_decay"] != 0:
            weight.add_(weight, alpha=(-group["weight_decay"] * lr))
        weight.add_(-update)
        if p.dtype in _HALF:
            p.copy_(weight)

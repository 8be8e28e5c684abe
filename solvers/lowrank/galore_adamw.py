"""GaLoreAdamW: AdamW on low-rank projections of the weight gradients (Zhao et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from optkit.projection import Projected

from ._galore_common import GaLoreMixin, check_adam_options, galore_defaults

__all__ = ["GaLoreAdamW"]


class GaLoreAdamW(GaLoreMixin, torch.optim.Optimizer):
    """AdamW whose moments live in a low-rank subspace of each weight gradient.

    For a projected matrix parameter with gradient ``G`` (shape ``(m, n)``) and basis ``B``
    from its :class:`optkit.projection.Projector`, one step is: ``R = Bᵀ G`` (or ``G B``),
    Adam moments of ``R``, ``N = m̂ / (√v̂ + eps)``, then ``W ← W − lr · scale · B N`` (or
    ``N Bᵀ``). Weight decay is decoupled and applied first, as in ``torch.optim.AdamW``; with
    ``rank`` at or above the projected dimension the step equals ``torch.optim.AdamW``'s.

    Parameters
    ----------
    params : iterable of tensors or dicts
        Parameters or param groups. Any group option below may be set per group; a group
        whose ``rank`` is ``None`` (the default) is plain AdamW. In a projected group,
        parameters that are not 2-D (biases, norms) train full-rank.
    lr, betas, eps, weight_decay : float
        As in ``torch.optim.AdamW``.
    rank : int or None
        Projection rank ``r``.
    update_proj_gap : int
        Steps between basis refreshes (the initial gap of the ``"adaptive"`` policy).
    scale : float
        GaLore's α, multiplying the update projected back.
    proj : {"svd", "randomized", "dct", "random"}
        Basis source (see :class:`optkit.projection.Projector`).
    proj_side : {"auto", "left", "right"}
    moments : {"keep", "reset", "rotate"}
        What happens to the Adam moments when the basis changes.
    refresh : {"fixed", "adaptive"}
    power_iters, oversample : int
        Randomized source only.
    proj_seed : int
        Base seed of the randomized and random sources (the same on every rank).
    error_feedback : bool
        Add what the projection dropped at one step to the next gradient (MicroAdam, DCT-AdamW);
        costs a full-size buffer ``state["error"]`` per projected weight.

    Notes
    -----
    State per projected parameter: ``exp_avg`` and ``exp_avg_sq`` of the projected shape
    (parameter dtype), ``step``, and the projector's dict (basis in the parameter dtype, or
    int32 indices for ``"dct"``). Works on CPU and CUDA tensors of any floating dtype.

    FSDP2 (``fully_shard``) parameters are accepted as they are, with the same result as
    unsharded training: the moments are sharded with the weight (replicated ``(r, n)`` for a
    left-side projection), the basis is replicated; see ``docs/methods/galore.md``,
    "Distributed training".
    """

    row_state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **galore: Any,
    ) -> None:
        check_adam_options(lr, betas, eps, weight_decay)
        defaults = galore_defaults(galore, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._init_galore()

    def adam_step(
        self,
        group: dict[str, Any],
        p: torch.Tensor,
        state: dict[str, Any],
        step: int,
        projected: Projected | None,
        low: torch.Tensor,
        target: torch.Tensor,
    ) -> None:
        """Advance ``p``'s moments on ``low`` and update ``target`` in place (weight decay first).

        ``low`` is :meth:`begin_step`'s gradient (projected when ``projected`` is not ``None``);
        ``target`` is ``p`` itself, or a tensor of ``p``'s shape that a subclass steps instead of
        the weight (:class:`~solvers.lowrank.gradnorm_lorp.GradNormLoRPAdamW`'s direction ``V``).
        """
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(low, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(low, memory_format=torch.preserve_format)
            state["moment_origin"] = 0
        elif projected is not None and projected.changed:
            state["exp_avg"] = self.transport(group, p, projected, state["exp_avg"])
            state["exp_avg_sq"] = self.transport(group, p, projected, state["exp_avg_sq"], second=True)
            if group["moments"] == "reset":
                state["moment_origin"] = step
        state["step"] += 1
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        target.mul_(1.0 - lr * group["weight_decay"])
        exp_avg.lerp_(low, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(low, low, value=1.0 - beta2)
        # bias correction counts the steps since the moments were last (re)started
        moment_steps = step + 1 - state["moment_origin"]
        step_size = lr / (1.0 - beta1**moment_steps)
        denom = (exp_avg_sq.sqrt() / (1.0 - beta2**moment_steps) ** 0.5).add_(eps)
        if projected is None:
            target.addcdiv_(exp_avg, denom, value=-step_size)
        elif self.projector_for(group).is_identity(state["projector"]):
            target.addcdiv_(exp_avg, denom, value=-step_size * group["scale"])
        else:
            target.add_(self.project_back(group, p, exp_avg / denom), alpha=-step_size)

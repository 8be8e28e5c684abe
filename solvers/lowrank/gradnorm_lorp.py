"""GradNormLoRP: weight-normalised training with low-rank projected direction gradients (Huang et al., AAAI 2025).

Each projected weight is reparameterised as in weight normalisation (Salimans and Kingma, 2016),
``W = m · V/‖V‖`` with one magnitude per output unit, and trained by AdamW on ``(m, V)``: the
direction's gradient goes through the group's GaLore projector (low-rank moments), the magnitude
vector gets full Adam moments. The model is unchanged: the optimizer derives both gradients from
the weight's gradient and writes ``m · V/‖V‖`` back into the weight after each step.

Conventions. ``norm_axis="rows"`` (the default) gives every row ``W[i, :]`` of an ``nn.Linear``
weight ``(out, in)`` its own magnitude, as ``torch.nn.utils.weight_norm(dim=0)`` and the reference
code (``‖v‖`` over ``dim=1``). The paper writes the weight ``d × k`` in DoRA's notation and its
norm ``‖·‖_c`` "column-wise", one magnitude per column (``m ∈ ℝ^{1×k}``): its columns are output
units, torch's rows, as in peft's DoRA (``get_weight_norm``: "column-wise", computed as
``torch.linalg.norm(weight, dim=1)`` on the ``(out, in)`` weight). ``norm_axis="columns"``
normalises ``W[:, j]`` instead (one magnitude per input unit).

Two defects of the reference ``LowRankWeightNormAdamW`` are absent here: the direction's gradient
keeps its tangential projection, ``∂L/∂V_i = (m_i/‖V_i‖)(g_i − ŵ_i ŵ_iᵀ g_i)`` (the reference omits
``ŵ ŵᵀ g``), and the learned magnitude is kept across steps (the reference resets it to ``‖V‖``
at every step, which undoes the magnitude's update).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from optkit.validation import check_choice

from .galore_adamw import GaLoreAdamW
from .galore_adamw8bit import GaLoreAdamW8bit

__all__ = ["NORM_AXES", "GradNormLoRPAdamW", "GradNormLoRPAdamW8bit", "weight_norm_gradients"]

NORM_AXES = ("rows", "columns")


def _reduced_dim(norm_axis: str) -> int:
    """The dimension a norm runs over: along each row (dim 1) or each column (dim 0)."""
    return 1 if norm_axis == "rows" else 0


def weight_norm_gradients(
    direction: torch.Tensor, grad: torch.Tensor, magnitude: torch.Tensor, direction_norm: torch.Tensor, *, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact gradients of ``L(W)`` through ``W = m · V/‖V‖``, from ``G = ∂L/∂W``.

    For each unit ``i`` (a slice along ``dim``), with ``ŵ_i = V_i/‖V_i‖`` and ``g_i`` the slice of ``G``:
    ``∂L/∂m_i = ŵ_iᵀ g_i`` and ``∂L/∂V_i = (m_i/‖V_i‖)(g_i − ŵ_i ŵ_iᵀ g_i)``.

    Parameters
    ----------
    direction : tensor of shape (m, n)
        ``ŵ``: unit-norm slices along ``dim``.
    grad : tensor of shape (m, n)
        ``∂L/∂W``.
    magnitude, direction_norm : tensor of shape (n,) if dim == 0 else (m,)
        ``m`` and ``‖V‖`` per unit.
    dim : {0, 1}
        The dimension the norms run over (1: one magnitude per row).

    Returns
    -------
    grad_magnitude : tensor of ``magnitude``'s shape
    grad_direction : tensor of shape (m, n)
        Both in ``grad``'s dtype and device.
    """
    radial = (direction * grad).sum(dim=dim, keepdim=True)
    grad_direction = (grad - direction * radial) * (magnitude / direction_norm).unsqueeze(dim)
    return radial.squeeze(dim), grad_direction


class _WeightNormalised:
    """The weight-normalised step over a GaLore AdamW's ``adam_step`` (mixed in before the optimizer class)."""

    supports_fsdp2 = False
    fsdp2_alternatives = (
        "a norm along a sharded dimension, and the magnitude vector, would need collectives; "
        "train it under DistributedDataParallel"
    )

    def _init_norm_axis(self, norm_axis: str) -> None:
        check_choice("norm_axis", norm_axis, NORM_AXES)
        self.defaults["norm_axis"] = norm_axis
        for group in self.param_groups:
            group.setdefault("norm_axis", norm_axis)
            check_choice("norm_axis", group["norm_axis"], NORM_AXES)

    def _step_parameter(self, group: dict[str, Any], p: torch.Tensor) -> None:
        if not self.uses_projection(group, p):
            state, step, projected, low = self.begin_step(group, p)
            self.adam_step(group, p, state, step, projected, low, p)
            return
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        dim = _reduced_dim(group["norm_axis"])
        state = self.state[p]
        if "magnitude" not in state:
            self._init_magnitude(state, p, dim)
        magnitude, direction_norm = state["magnitude"], state["direction_norm"]
        # ‖W_i‖ = |m_i|, so V_i's unit vector is W_i's times the sign of m_i (a magnitude may turn negative)
        direction = p * (torch.sign(magnitude) / torch.linalg.vector_norm(p, dim=dim)).unsqueeze(dim)
        grad_magnitude, grad_direction = weight_norm_gradients(direction, grad, magnitude, direction_norm, dim=dim)
        # V's gradient is projected (with error feedback) as a GaLore weight's would be
        state, step, projected, low = self.begin_step(group, p, grad=grad_direction)
        # V itself: only its norms are kept between steps, its direction is the weight's
        full_direction = direction * direction_norm.unsqueeze(dim)
        self.adam_step(group, p, state, step, projected, low, full_direction)
        self._magnitude_step(group, state, grad_magnitude, step)
        torch.linalg.vector_norm(full_direction, dim=dim, out=direction_norm)
        p.copy_(full_direction * (magnitude / direction_norm).unsqueeze(dim))

    @staticmethod
    def _init_magnitude(state: dict[str, Any], p: torch.Tensor, dim: int) -> None:
        norms = torch.linalg.vector_norm(p, dim=dim)
        if not bool((norms > 0).all()):
            raise ValueError(
                f"a weight-normalised weight of shape {tuple(p.shape)} has a zero "
                f"{'row' if dim == 1 else 'column'}, whose direction is undefined; train it in a group "
                "with rank=None (plain AdamW) or choose the other norm_axis"
            )
        state["step"] = torch.tensor(0.0)
        # initially V = W: the magnitudes and V's norms are both W's
        state["magnitude"] = norms
        state["direction_norm"] = norms.clone()
        state["magnitude_exp_avg"] = torch.zeros_like(norms)
        state["magnitude_exp_avg_sq"] = torch.zeros_like(norms)

    @staticmethod
    def _magnitude_step(group: dict[str, Any], state: dict[str, Any], grad: torch.Tensor, step: int) -> None:
        """AdamW on the magnitude vector, in ``torch.optim.AdamW``'s operation order (not scaled by ``scale``)."""
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        magnitude, exp_avg, exp_avg_sq = state["magnitude"], state["magnitude_exp_avg"], state["magnitude_exp_avg_sq"]
        magnitude.mul_(1.0 - lr * group["weight_decay"])
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size = lr / (1.0 - beta1 ** (step + 1))
        denom = (exp_avg_sq.sqrt() / (1.0 - beta2 ** (step + 1)) ** 0.5).add_(eps)
        magnitude.addcdiv_(exp_avg, denom, value=-step_size)


class GradNormLoRPAdamW(_WeightNormalised, GaLoreAdamW):
    """AdamW on a weight-normalised reparameterisation ``W = m · V/‖V‖``, ``V``'s moments low-rank.

    For a projected weight ``W`` (shape ``(m, n)``) with gradient ``G``, one step (``norm_axis="rows"``,
    one magnitude per row; ``"columns"`` is the same on ``Wᵀ``):

    1. ``ŵ_i = sign(m_i) W_i/‖W_i‖`` (V's unit rows), ``V = diag(s) ŵ`` with ``s = ‖V_i‖`` from the state;
    2. ``∂L/∂m_i = ŵ_iᵀ g_i`` and ``∂L/∂V_i = (m_i/s_i)(g_i − ŵ_i ŵ_iᵀ g_i)`` (:func:`weight_norm_gradients`);
    3. ``∂L/∂V`` is projected by the group's GaLore projector and stepped as :class:`GaLoreAdamW`
       steps a weight (low-rank moments, ``scale``, ``moments`` rule, error feedback); ``m`` by
       AdamW with full moments; decoupled weight decay on both, applied first;
    4. ``s ← ‖V_i‖`` and ``W ← diag(m/s) V``.

    At the first step ``m = s = ‖W_i‖`` (so ``V = W``). With ``rank`` at or above the projected
    dimension the step is ``torch.optim.AdamW``'s on ``(m, V)``. Parameters that are not projected
    (rank ``None``, not 2-D) are plain AdamW.

    Parameters
    ----------
    params : iterable of tensors or dicts
        Parameters or param groups; any option below may be set per group.
    lr, betas, eps, weight_decay : float
        As in ``torch.optim.AdamW``, for ``V``, ``m`` and the unprojected parameters.
    norm_axis : {"rows", "columns"}
        ``"rows"``: one magnitude per row ``W[i, :]`` (per output unit of an ``nn.Linear``;
        ``weight_norm(dim=0)``; the paper's column norm in its ``d × k`` notation).
        ``"columns"``: one per column ``W[:, j]``.
    rank, update_proj_gap, scale, proj, proj_side, moments, refresh, power_iters, oversample, proj_seed, error_feedback
        GaLore options, as in :class:`GaLoreAdamW`, applied to ``∂L/∂V``.

    Raises
    ------
    ValueError
        At construction for bad options; at a weight's first step when a row (column) is zero,
        since its direction is undefined.

    Notes
    -----
    State per projected weight, besides :class:`GaLoreAdamW`'s (``exp_avg``/``exp_avg_sq`` of the
    projected shape, for ``V``; ``step``; the projector's dict): ``magnitude`` (``m``),
    ``direction_norm`` (``‖V_i‖``), ``magnitude_exp_avg``, ``magnitude_exp_avg_sq``, four vectors
    of one value per unit in the parameter's dtype. ``V`` itself is never stored: its direction is
    the weight's. Transients per step: ``ŵ``, ``∂L/∂V`` and ``V``, each of the weight's shape.
    CPU or CUDA, any floating dtype; under DistributedDataParallel it works as is, FSDP2-sharded
    parameters are refused.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        norm_axis: str = "rows",
        **galore: Any,
    ) -> None:
        check_choice("norm_axis", norm_axis, NORM_AXES)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **galore)
        self._init_norm_axis(norm_axis)


class GradNormLoRPAdamW8bit(_WeightNormalised, GaLoreAdamW8bit):
    """:class:`GradNormLoRPAdamW` with ``V``'s projected moments 8-bit block-wise (bitsandbytes kernels).

    ``V``'s moments are stepped by :meth:`GaLoreAdamW8bit.adam_step` (uint8 codes and one float32
    scale per 256 values, float32 under ``min_8bit_size`` values); the magnitude vector keeps
    full Adam moments in the parameter's dtype, as in :class:`GradNormLoRPAdamW` (one value per
    unit, far below any useful ``min_8bit_size``). Unprojected parameters are 8-bit AdamW, as in
    :class:`GaLoreAdamW8bit`.

    Parameters
    ----------
    params, lr, betas, eps, weight_decay, norm_axis
        As in :class:`GradNormLoRPAdamW`.
    min_8bit_size : int
        As in :class:`GaLoreAdamW8bit`, counted in the projected shape.
    rank, update_proj_gap, scale, proj, proj_side, moments, refresh, power_iters, oversample, proj_seed, error_feedback
        GaLore options, as in :class:`GaLoreAdamW`.

    Raises
    ------
    ImportError
        At construction, when bitsandbytes is not installed.
    ValueError
        As :class:`GradNormLoRPAdamW`.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        min_8bit_size: int = 4096,
        norm_axis: str = "rows",
        **galore: Any,
    ) -> None:
        check_choice("norm_axis", norm_axis, NORM_AXES)
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, min_8bit_size=min_8bit_size, **galore
        )
        self._init_norm_axis(norm_axis)

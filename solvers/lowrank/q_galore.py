"""Q-GaLore (Zhang et al., 2024): GaLore on INT8 weights, with INT4 projections and a lazily refreshed subspace.

:class:`QGaLoreAdamW8bit` (the paper's: 8-bit Adam moments) and :class:`QGaLoreAdamW` (float moments)
train a model whose linear layers were replaced by :class:`~solvers.lowrank.int8_linear.Int8Linear`
(:func:`~solvers.lowrank.int8_linear.quantize_linear_layers`) together with its float parameters
(embeddings, norms, biases, output layer), in one step. For an INT8 weight, given in a param group
by its code tensor ``layer.weight_codes``, a step is:

1. under ``torch.distributed`` with more than one rank, average ``layer.weight_grad`` over the
   default process group (DDP never sees it: the codes are no grad-requiring parameter);
2. dequantise the weight to float (float32, or the gradient's float64);
3. the GaLore-projected Adam update of the base optimizer (:class:`GaLoreAdamW` or
   :class:`GaLoreAdamW8bit`), its state kept under the code tensor;
4. re-quantise the weight into the layer with stochastic rounding (unbiased: small updates are
   not rounded away). The uniform draws come from a generator seeded at each step from
   ``state["rounding_seed"]`` (an int made of ``quant_seed`` and the parameter's index) and the
   step count ``state["step"]``: a resumed run draws what an uninterrupted one does and every
   rank draws the same, on any device.

Float parameters take the base optimizer's step unchanged, so with float weights only (nothing
quantised), ``proj_bits=None`` and a fixed refresh, :class:`QGaLoreAdamW` is :class:`GaLoreAdamW`.

The differences from the reference (VITA-Group/Q-GaLore): the adaptive refresh compares whole
subspaces, sign- and rotation-invariant (:class:`optkit.projection.AdaptiveGap`), where the
reference compares first singular vectors without ``abs``; INT4 bases are packed two codes per
byte; the quantiser keeps each group's minimum as a float (single-sign groups stay exact); float
parameters are stepped also under layer-wise stepping (Q-GaLore#12); and no float copy of the
weight is kept between steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from .galore_adamw import GaLoreAdamW
from .galore_adamw8bit import GaLoreAdamW8bit
from .int8_linear import Int8Linear, quantized_linear_of

__all__ = ["QGALORE_DEFAULTS", "QGaLoreAdamW", "QGaLoreAdamW8bit", "q_galore_param_groups"]

#: Q-GaLore's GaLore defaults (the paper's): INT4 bases in groups of 256, lazy refresh.
QGALORE_DEFAULTS: dict[str, Any] = {"proj_bits": 4, "proj_group_size": 256, "refresh": "adaptive"}
# the weight re-quantisation options, per group
_WEIGHT_DEFAULTS: dict[str, Any] = {"stochastic_round": True, "quant_seed": 0}


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(GaLore options with Q-GaLore's defaults, weight re-quantisation options)."""
    weight = {name: options.pop(name, default) for name, default in _WEIGHT_DEFAULTS.items()}
    return {**QGALORE_DEFAULTS, **options}, weight


class _QuantizedWeights:
    """The Q-GaLore step on INT8 weights, mixed into a GaLore optimizer (see the module docstring)."""

    def _init_quantized(self, weight_options: dict[str, Any]) -> None:
        """Add the weight options to the defaults and groups; validate them and the uint8 parameters."""
        self.defaults.update(weight_options)
        for group in self.param_groups:
            for name, value in weight_options.items():
                group.setdefault(name, value)
            if not isinstance(group["stochastic_round"], bool):
                raise TypeError(f"stochastic_round must be true or false, got {group['stochastic_round']!r}")
            seed = group["quant_seed"]
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"quant_seed must be a non-negative integer, got {seed!r}")
            for p in group["params"]:
                if p.dtype == torch.uint8 and quantized_linear_of(p) is None:
                    raise ValueError(
                        "a uint8 parameter that is not the weight_codes of an Int8Linear was given; pass "
                        "Int8Linear.weight_codes (from quantize_linear_layers) for quantised weights"
                    )

    @torch.no_grad()
    def step(self, closure=None):
        """One step on every parameter with a gradient (INT8 weights: ``weight_grad``); returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                layer = quantized_linear_of(p)
                if layer is not None and layer.weight_grad is not None:
                    self._step_quantized(group, p, layer)
        # the code tensors have no .grad: the base step sees the float parameters only
        super().step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``torch.optim.Optimizer.zero_grad``, also for the INT8 weights' ``weight_grad``."""
        super().zero_grad(set_to_none=set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                layer = quantized_linear_of(p)
                if layer is not None:
                    layer.clear_weight_grad(set_to_none)

    def _step_quantized(self, group: dict[str, Any], codes: torch.Tensor, layer: Int8Linear) -> None:
        grad = layer.weight_grad
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(grad)
            grad.div_(dist.get_world_size())
        weight = layer.dequantized_weight(grad.dtype)
        weight.grad = grad
        state = self.state[codes]
        # the base optimizer's step on the float weight, with the code tensor's state and index
        self.state[weight] = state
        self._param_keys[weight] = self._param_keys[codes]
        try:
            self._step_parameter(group, weight)
        finally:
            del self.state[weight], self._param_keys[weight]
        generator = None
        if group["stochastic_round"]:
            if "rounding_seed" not in state:
                state["rounding_seed"] = group["quant_seed"] * 1_000_003 + self._param_keys[codes]
            # one stream per (weight, step), from numbers already in the state: nothing to synchronise with a
            # device, and no generator state to keep (a CPU mt19937 state is 5 KB per weight)
            steps = int(state["step"])
            generator = torch.Generator(device=weight.device).manual_seed(
                (state["rounding_seed"] * 2**32 + steps) % 2**63
            )
        layer.set_weight(weight, generator=generator)


class QGaLoreAdamW(_QuantizedWeights, GaLoreAdamW):
    """Q-GaLore with float32 Adam moments: :class:`GaLoreAdamW` on INT8 and float weights.

    Parameters
    ----------
    params : iterable of tensors or dicts
        Float parameters and the ``weight_codes`` of :class:`~solvers.lowrank.int8_linear.Int8Linear`
        layers (any mix, in any groups); a group with a ``rank`` projects its matrices, INT8
        weights included.
    lr, betas, eps, weight_decay : float
        As in ``torch.optim.AdamW``.
    rank, update_proj_gap, scale, proj, proj_side, moments, refresh, power_iters, oversample, proj_seed,
    error_feedback, proj_bits, proj_group_size
        GaLore options, as in :class:`~solvers.lowrank.galore_adamw.GaLoreAdamW`, with Q-GaLore's
        defaults ``proj_bits=4``, ``proj_group_size=256`` and ``refresh="adaptive"`` (the gap doubles
        while the mean subspace similarity of the last 5 refreshes is at least 0.4).
    stochastic_round : bool
        Re-quantise INT8 weights with stochastic rounding (default) or to the nearest code
        (updates smaller than half a quantisation step are then lost).
    quant_seed : int
        Base seed of the stochastic rounding (the same on every rank).

    Notes
    -----
    State of an INT8 weight: the base optimizer's (moments of the projected gradient, ``step``,
    the projector's dict) plus ``rounding_seed`` (an int). Tensors and numbers only:
    ``state_dict()`` loads with ``torch.load(weights_only=True)``, and resuming is bit-exact.

    Under ``torch.distributed`` every rank must step the same INT8 weights in the same order
    (their gradients are averaged by blocking all-reduces in :meth:`step`). FSDP2 is not
    supported for INT8 weights (they are not DTensors).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **options: Any,
    ) -> None:
        galore, weight = _split_options(dict(options))
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **galore)
        self._init_quantized(weight)


class QGaLoreAdamW8bit(_QuantizedWeights, GaLoreAdamW8bit):
    """Q-GaLore as in the paper: :class:`GaLoreAdamW8bit` (bitsandbytes 8-bit block-wise moments) on INT8
    and float weights.

    Parameters
    ----------
    params, lr, betas, eps, weight_decay, stochastic_round, quant_seed, and the GaLore options
        As in :class:`QGaLoreAdamW`.
    min_8bit_size : int
        As in :class:`~solvers.lowrank.galore_adamw8bit.GaLoreAdamW8bit`.

    Notes
    -----
    State of an INT8 weight: :class:`GaLoreAdamW8bit`'s plus ``rounding_seed`` (see :class:`QGaLoreAdamW`).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        min_8bit_size: int = 4096,
        **options: Any,
    ) -> None:
        galore, weight = _split_options(dict(options))
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, min_8bit_size=min_8bit_size, **galore
        )
        self._init_quantized(weight)


def q_galore_param_groups(model: torch.nn.Module, *, rank: int, **options: Any) -> list[dict[str, Any]]:
    """Param groups for a Q-GaLore optimizer: the INT8 weights projected, every float parameter full-rank.

    Parameters
    ----------
    model : torch.nn.Module
        With :class:`~solvers.lowrank.int8_linear.Int8Linear` layers (from
        :func:`~solvers.lowrank.int8_linear.quantize_linear_layers`).
    rank : int
        The projection rank (positive).
    **options
        Other per-group options of the projected group (``update_proj_gap``, ``proj_bits``, …).

    Returns
    -------
    list of dict
        ``[{"params": float parameters with requires_grad}, {"params": the code tensors, "rank": rank, …}]``;
        the first group is omitted when empty.

    Raises
    ------
    ValueError
        When ``rank`` is not a positive integer or ``model`` has no Int8Linear layer.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    codes = [m.weight_codes for m in model.modules() if isinstance(m, Int8Linear)]
    if not codes:
        raise ValueError(f"{type(model).__name__} has no Int8Linear layer: call quantize_linear_layers(model) first")
    rest = [p for p in model.parameters() if p.requires_grad]
    return ([{"params": rest}] if rest else []) + [{"params": codes, "rank": rank, **options}]

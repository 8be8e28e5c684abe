"""GaLoreAdamW8bit: AdamW with 8-bit block-wise moments of low-rank projected gradients (bitsandbytes kernels)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from optkit.projection import Projected

from ._galore_common import GaLoreMixin, check_adam_options, galore_defaults

__all__ = ["GaLoreAdamW8bit"]

_CODE_MAPS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
BLOCK_SIZE = 256  # the block size of bitsandbytes' 2-state block-wise kernels (fixed in their CPU and CUDA code)


def _bitsandbytes():
    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError as exc:
        raise ImportError("GaLoreAdamW8bit needs bitsandbytes: pip install bitsandbytes") from exc
    return bnb_functional


def _code_maps(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' signed and unsigned dynamic maps (256 float32 entries each), one pair per device."""
    key = str(device)
    if key not in _CODE_MAPS:
        bnb = _bitsandbytes()
        _CODE_MAPS[key] = (
            bnb.create_dynamic_map(signed=True).to(device),
            bnb.create_dynamic_map(signed=False).to(device),
        )
    return _CODE_MAPS[key]


class GaLoreAdamW8bit(GaLoreMixin, torch.optim.Optimizer):
    """AdamW with 8-bit block-wise moments, kept in a low-rank subspace of each weight gradient.

    The moments are bitsandbytes' (Dettmers et al., ICLR 2022): uint8 codes in the dynamic
    tree map (signed for ``m``, unsigned for ``v``) with one float32 absmax per block of 256
    values, updated by ``bitsandbytes.functional.optimizer_update_8bit_blockwise`` (written
    against bitsandbytes 0.50.2; that maintained library supplies the CPU and CUDA
    kernels). For a projected matrix the kernel's "parameter" is a zero float32 buffer of
    the projected shape, into which it writes ``−lr · m̂ / (√v̂ + eps)``; the step is then
    ``W ← W (1 − lr·weight_decay) + scale · B buffer`` (or ``buffer Bᵀ``), the weight decay
    decoupled and applied first, as in ``torch.optim.AdamW`` and :class:`GaLoreAdamW`.
    Parameters that are not projected (or whose projector is the identity) are updated by
    the kernel in place, as ``bitsandbytes.optim.AdamW8bit`` does: with ``rank`` at or above
    the projected dimension, for float32 parameters on the CPU, every step is bit for bit
    that optimizer's (half-precision weights round once more, after the weight decay).

    Parameters
    ----------
    params : iterable of tensors or dicts
        Parameters or param groups; any option below may be set per group. A group whose
        ``rank`` is ``None`` (the default) is plain 8-bit AdamW; in a projected group,
        parameters that are not 2-D train full-rank.
    lr, betas, eps, weight_decay : float
        As in ``torch.optim.AdamW`` (``weight_decay`` defaults to 0, as in
        :class:`GaLoreAdamW`; bitsandbytes' and galore-torch's default is 1e-2).
    min_8bit_size : int
        Moments of fewer elements than this (counted in the projected shape) stay float32,
        as bitsandbytes' ``min_8bit_size``.
    rank, update_proj_gap, scale, proj, proj_side, moments, refresh, power_iters, oversample, proj_seed, error_feedback
        GaLore options, as in :class:`solvers.lowrank.galore_adamw.GaLoreAdamW`.

    Raises
    ------
    ImportError
        At construction, when bitsandbytes is not installed.

    Notes
    -----
    Unlike galore-torch's ``GaLoreAdamW8bit``, the weight is never swapped out of ``p.data``:
    that costs a full copy of the weight per step (``p.saved_data = p.data.clone()``) and a
    ``torch.cuda.synchronize()`` per parameter. Here the transients are the projected
    shape's float32 buffer and gradient copy, and the back-projected update (which any
    GaLore step makes); no synchronisation is forced.

    On a basis change the moments are dequantised, moved by :meth:`transport` (``moments``
    rule) and requantised; ``"reset"`` also restarts the bias correction.

    On CUDA, bitsandbytes' kernel applies weight decay after the Adam update
    (``W ← (W − lr·u)(1 − lr·wd)``); applying it first, as here, differs from
    ``bitsandbytes.optim.AdamW8bit`` there by ``lr²·wd·u`` per step.

    State per parameter: ``state1`` / ``state2`` (uint8, projected shape, or float32 below
    ``min_8bit_size``), ``absmax1`` / ``absmax2`` (float32, one per 256 values) and
    ``qmap1`` / ``qmap2`` (the 256-entry float32 code maps, shared by the parameters of a
    device and saved with each, so that a checkpoint decodes by itself), ``step``,
    ``moment_origin`` (step of the last moment reset) and the projector's dict. All tensors:
    ``state_dict()`` loads with ``torch.load(weights_only=True)``.

    FSDP2-sharded parameters are refused: bitsandbytes quantises blocks of 256 values of the
    flattened moment, so a rank's shard would be quantised in other blocks than the unsharded
    moment and the result would differ from unsharded training. Under DDP it works as is.
    """

    supports_fsdp2 = False
    fsdp2_alternatives = (
        "bitsandbytes quantises blocks of 256 values of the flattened moment, which row shards do not align with; "
        "use GaLoreAdamW (or GaLoreAdafactor) under FSDP2, or GaLoreAdamW8bit under DistributedDataParallel"
    )

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        min_8bit_size: int = 4096,
        **galore: Any,
    ) -> None:
        _bitsandbytes()
        check_adam_options(lr, betas, eps, weight_decay)
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or min_8bit_size < 0:
            raise ValueError(f"min_8bit_size must be a non-negative integer, got {min_8bit_size!r}")
        defaults = galore_defaults(
            galore, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, min_8bit_size=min_8bit_size
        )
        super().__init__(params, defaults)
        self._init_galore()

    def _init_moments(self, group: dict[str, Any], state: dict[str, Any], low: torch.Tensor) -> None:
        shape, device = low.shape, low.device
        if low.numel() >= group["min_8bit_size"]:
            blocks = math.ceil(low.numel() / BLOCK_SIZE)
            state["qmap1"], state["qmap2"] = _code_maps(device)
            for i in (1, 2):
                state[f"state{i}"] = torch.zeros(shape, dtype=torch.uint8, device=device)
                state[f"absmax{i}"] = torch.zeros(blocks, dtype=torch.float32, device=device)
        else:
            for i in (1, 2):
                state[f"state{i}"] = torch.zeros(shape, dtype=torch.float32, device=device)
        state["moment_origin"] = 0

    def _transport_moments(self, group, p, projected, state) -> None:
        bnb = _bitsandbytes()
        for i, second in ((1, False), (2, True)):
            moment = state[f"state{i}"]
            if moment.dtype != torch.uint8:
                state[f"state{i}"] = self.transport(group, p, projected, moment, second=second)
                continue
            absmax, code = state[f"absmax{i}"], state[f"qmap{i}"]
            full = bnb.dequantize_blockwise(moment, absmax=absmax, code=code, blocksize=BLOCK_SIZE)
            full = self.transport(group, p, projected, full, second=second).contiguous()
            bnb.quantize_blockwise(full, code=code, absmax=absmax, out=moment, blocksize=BLOCK_SIZE)

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
        """Advance ``p``'s 8-bit moments on ``low`` and update ``target`` in place (weight decay first).

        ``low`` is :meth:`begin_step`'s gradient (projected when ``projected`` is not ``None``);
        ``target`` is ``p`` itself, or a tensor of ``p``'s shape that a subclass steps instead of
        the weight (:class:`~solvers.lowrank.gradnorm_lorp.GradNormLoRPAdamW8bit`'s direction ``V``).
        """
        if "moment_origin" not in state:
            self._init_moments(group, state, low)
        elif projected is not None and projected.changed and group["moments"] != "keep":
            self._transport_moments(group, p, projected, state)
            if group["moments"] == "reset":
                state["moment_origin"] = step
        state["step"] += 1
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        target.mul_(1.0 - lr * group["weight_decay"])

        identity = projected is None or self.projector_for(group).is_identity(state["projector"])
        # bitsandbytes' CUDA kernels read g and p as contiguous arrays of g's dtype: in place
        # only for a p of the gradient's dtype (a non-contiguous one through a contiguous copy,
        # as bitsandbytes does), else through a float32 buffer
        in_place = identity and low.dtype == target.dtype
        if in_place:
            buffer, g = target.contiguous(), low.contiguous()
            step_lr = lr * group["scale"] if projected is not None else lr
        else:
            buffer = torch.zeros(low.shape, dtype=torch.float32, device=low.device)
            g, step_lr = low.to(torch.float32, memory_format=torch.contiguous_format), lr
        # bias correction counts the steps since the moments were last (re)started
        moment_steps = step + 1 - state["moment_origin"]
        bnb = _bitsandbytes()
        if state["state1"].dtype == torch.uint8:
            bnb.optimizer_update_8bit_blockwise(
                "adam",
                g=g,
                p=buffer,
                state1=state["state1"],
                state2=state["state2"],
                beta1=beta1,
                beta2=beta2,
                beta3=0.0,
                alpha=0.0,
                eps=eps,
                step=moment_steps,
                lr=step_lr,
                qmap1=state["qmap1"],
                qmap2=state["qmap2"],
                absmax1=state["absmax1"],
                absmax2=state["absmax2"],
                weight_decay=0.0,
            )
        else:
            bnb.optimizer_update_32bit(
                "adam",
                g=g,
                p=buffer,
                state1=state["state1"],
                state2=state["state2"],
                beta1=beta1,
                beta2=beta2,
                eps=eps,
                step=moment_steps,
                lr=step_lr,
                weight_decay=0.0,
            )
        if not in_place:
            target.add_(buffer if projected is None else self.project_back(group, p, buffer))
        elif buffer is not target:
            target.copy_(buffer)

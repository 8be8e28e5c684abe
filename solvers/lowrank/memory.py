"""Training memory by category: weights, gradients, optimizer states, projector storage, refresh workspace.

Users dispute GaLore's memory figures mostly for lack of a breakdown (GaLore#6, #28, #67).
:func:`measure_memory` reads the bytes a live model and optimizer hold;
:func:`estimate_memory` computes the same categories from shapes alone (a model on the
``meta`` device will do), so the paper-sized configurations can be tabulated on a laptop.
The two agree exactly on a model small enough to train (tested).

The categories:

* ``weights``: every parameter; for an INT8 weight (:class:`~solvers.lowrank.int8_linear.Int8Linear`,
  Q-GaLore) its uint8 codes and the float32 scale and minimum of each group, all parameters.
* ``gradients``: the weight gradients alive at the peak; an INT8 weight's is its float32
  ``weight_grad`` buffer. With layer-wise stepping each
  gradient is freed as soon as its parameter has stepped, so the peak is the largest single
  gradient instead of their sum.
* ``optimizer_states``: moments (32-bit, or 8-bit plus block scales), step counters excluded.
* ``projector``: bases (parameter dtype) or DCT indices (int32).
* ``refresh_workspace``: the transient float32 buffers of one basis refresh of the largest
  projected matrix (refreshes of different matrices never overlap).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from optkit.projection import Projector

from .int8_linear import Int8Linear, quantized_linear_of

__all__ = ["CATEGORIES", "estimate_memory", "measure_memory", "refresh_workspace_bytes"]

CATEGORIES = ("weights", "gradients", "optimizer_states", "projector", "refresh_workspace")
# bitsandbytes' block-wise 8-bit state: one byte per element plus a float32 scale per block
_BLOCK = 256


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def refresh_workspace_bytes(
    shape: tuple[int, int], rank: int, source: str, *, side: str = "auto", oversample: int = 8
) -> int:
    """Float32 bytes of the transient buffers of one basis refresh of a ``shape`` gradient.

    ``svd``: the float32 copy of ``G`` (d×k oriented) plus the thin factors ``U`` (d×p), ``S``
    and ``Vᵀ`` (p×k), p = min(d, k). ``randomized``: the test matrix (k×w), two d×w range
    blocks, ``M = QᵀG`` (w×k) and its w×w Gram matrix (float64), w = r + oversample.
    ``dct``: the float32 copy, its complex FFT (2·d·k) and the similarity ``S`` (d×k).
    ``random``: the d×r Gaussian and its QR factor.
    """
    projector = Projector(rank, source=source, side=side, oversample=oversample)
    state = projector.init_state(shape)
    if projector.is_identity(state):
        return 0
    d = state["dim"]
    k = shape[0] * shape[1] // d
    p, w = min(d, k), min(rank + oversample, d)
    elements = {
        "svd": d * k + d * p + p + p * k,
        "randomized": k * w + 2 * d * w + w * k + 2 * w * w,
        "dct": d * k + 2 * d * k + d * k,
        "random": 2 * d * rank,
    }[source]
    return 4 * elements


def _state_bytes(states: Iterable[dict[str, Any]]) -> tuple[int, int]:
    moments = projector = 0
    for state in states:
        for key, value in state.items():
            if key == "projector":
                projector += sum(_nbytes(t) for t in value.values() if torch.is_tensor(t))
            elif torch.is_tensor(value) and value.dim() > 0 and key not in ("qmap1", "qmap2"):
                moments += _nbytes(value)
    return moments, projector


def _workspace(optimizer: torch.optim.Optimizer) -> int:
    largest = 0
    for group in optimizer.param_groups:
        if group.get("rank") is None:
            continue
        for p in group["params"]:
            layer = quantized_linear_of(p)
            shape = tuple(p.shape) if layer is None else layer.weight_shape
            if len(shape) == 2:
                largest = max(
                    largest,
                    refresh_workspace_bytes(
                        shape,
                        group["rank"],
                        group["proj"],
                        side=group["proj_side"],
                        oversample=group["oversample"],
                    ),
                )
    return largest


def measure_memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, layerwise: bool = False) -> dict:
    """Bytes by category held by a model and its optimizer after at least one step.

    Weights, optimizer states and projector storage are read from the live tensors
    (``optimizer.state``; bitsandbytes' shared quantisation maps are not counted). Gradients
    are the parameters' gradient sizes (see the module docstring for ``layerwise``), and the
    refresh workspace is :func:`refresh_workspace_bytes` of the largest projected matrix.
    """
    params = [p for p in model.parameters()]
    grads = [_nbytes(p) for p in params if p.requires_grad]
    # an INT8 weight's gradient is a float32 buffer of the weight's shape (the codes require no grad)
    grads += [4 * m.in_features * m.out_features for m in model.modules() if isinstance(m, Int8Linear)]
    moments, projector = _state_bytes(optimizer.state.values())
    return {
        "weights": sum(_nbytes(p) for p in params),
        "gradients": max(grads, default=0) if layerwise else sum(grads),
        "optimizer_states": moments,
        "projector": projector,
        "refresh_workspace": _workspace(optimizer),
    }


def _quantized_bytes(numel: int, bits: int, group_size: int) -> int:
    """Bytes of a tensor of ``numel`` values quantised by :func:`optkit.quantization.quantize`: padded codes
    (two per byte at 4 bits) and a float32 scale and minimum per group."""
    groups = -(-numel // group_size)
    return groups * group_size * bits // 8 + 8 * groups


def estimate_memory(
    param_groups: list[dict[str, Any]],
    *,
    optimizer: str = "galore-adamw",
    layerwise: bool = False,
    weight_bits: int | None = None,
    weight_group_size: int = 256,
    frozen: Iterable[torch.Tensor] = (),
    magnitudes: bool = False,
) -> dict:
    """Bytes by category from shapes alone, for parameters on any device (``meta`` included).

    Parameters
    ----------
    param_groups : list of dict
        As given to a GaLore optimizer (e.g. from :func:`galore_param_groups`); groups
        without ``rank`` (or all groups, for ``"adamw"`` / ``"adamw8bit"``) train full-rank.
    optimizer : {"galore-adamw", "galore-adamw8bit", "adamw", "adamw8bit"}
        Moments are two tensors of the (projected) gradient's shape in the parameter dtype,
        or 8-bit block-wise ones (tensors under 4096 elements stay 32-bit, as bitsandbytes does).
    layerwise : bool
        Per-layer stepping (gradient peak = the largest gradient).
    weight_bits : {None, 8}
        ``8``: Q-GaLore, the projected matrices stored as :class:`~solvers.lowrank.int8_linear.Int8Linear`
        weights in groups of ``weight_group_size`` (codes and a float32 scale and minimum per group),
        their gradients and moments float32. A group's ``proj_bits`` (4 or 8) and
        ``proj_group_size`` give its bases' storage in any case.
    frozen : iterable of tensors
        Parameters that train in none of the steps counted: weights only, no gradient, moments or
        projector (OwLore and LISA: the blocks outside the active set; any γ of L identical blocks
        cost the same).
    magnitudes : bool
        GradNormLoRP: every projected matrix also keeps four vectors of one value per row (the
        magnitude, the direction's norm and the magnitude's two Adam moments), in its dtype.

    Raises
    ------
    ValueError
        For a ``weight_bits`` other than ``None`` or 8, or a ``weight_group_size`` below 1.
    """
    if weight_bits not in (None, 8):
        raise ValueError(f"weight_bits must be None or 8, got {weight_bits!r}")
    if isinstance(weight_group_size, bool) or not isinstance(weight_group_size, int) or weight_group_size < 1:
        raise ValueError(f"weight_group_size must be a positive integer, got {weight_group_size!r}")
    eight_bit = optimizer.endswith("8bit")
    projected = optimizer.startswith("galore")
    out = dict.fromkeys(CATEGORIES, 0)
    grads = []
    frozen_ids = {id(p) for p in frozen}
    for group in param_groups:
        rank = group.get("rank") if projected else None
        for p in group["params"]:
            size = p.element_size()
            numel = p.numel()
            if id(p) in frozen_ids:
                out["weights"] += numel * size
                continue
            if weight_bits is not None and rank is not None and p.dim() == 2:
                # an INT8 weight: its gradient, the dequantised weight and the moments are float32
                out["weights"] += _quantized_bytes(numel, weight_bits, weight_group_size)
                size = 4
            else:
                out["weights"] += numel * size
            grads.append(numel * size)
            if rank is not None and p.dim() == 2:
                proj = Projector(rank, source=group.get("proj", "svd"), side=group.get("proj_side", "auto"))
                state = proj.init_state(tuple(p.shape))
                low = proj.low_rank_shape(state, tuple(p.shape))
                numel = low[0] * low[1]
                proj_bits = group.get("proj_bits")
                if not proj.is_identity(state) and proj.source != "dct" and proj_bits is not None:
                    basis = state["rank"] * state["dim"]
                    out["projector"] += _quantized_bytes(basis, proj_bits, group.get("proj_group_size", 256))
                elif not proj.is_identity(state):
                    out["projector"] += state["rank"] * (4 if proj.source == "dct" else state["dim"] * size)
                if magnitudes:
                    out["optimizer_states"] += 4 * p.shape[0] * size
                if not proj.is_identity(state):
                    out["refresh_workspace"] = max(
                        out["refresh_workspace"],
                        refresh_workspace_bytes(tuple(p.shape), rank, proj.source, side=proj.side),
                    )
            if eight_bit and numel >= 4096:
                out["optimizer_states"] += 2 * (numel + 4 * -(-numel // _BLOCK))
            else:
                out["optimizer_states"] += 2 * numel * (4 if eight_bit else size)
    out["gradients"] = max(grads, default=0) if layerwise else sum(grads)
    return out

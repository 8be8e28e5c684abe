"""Group-wise asymmetric integer quantisation of float tensors (4 or 8 bits), with int4 packing.

The flattened tensor is cut into consecutive groups of ``group_size`` values (the last one
padded by repeating the tensor's last value, so the padding never widens its group's range).
Each group keeps its minimum as a float32 ``offset`` and ``scale = (max − min) / (2^b − 1)``;
a value is stored as the code ``c ∈ {0, …, 2^b − 1}`` with ``x ≈ offset + c · scale``.

Why a float offset and not an integer zero point: the usual ``zero = round(−min / scale)``
clamped to ``[0, 2^b − 1]`` cannot represent a group whose values all share one sign (for
``[1, 2]`` the zero point would be −15 at 4 bits, clamped to 0, and every value decodes to
at most ``15 · scale = 1``), a defect of the Q-GaLore reference code. Storing the minimum
itself keeps every group exact to ``scale / 2`` whatever its sign.

Rounding is to the nearest code (``|x − x̂| ≤ scale / 2``) or stochastic (``floor(y + u)``
with ``u`` uniform in ``[0, 1)``), which is unbiased: ``E[x̂] = x``, and ``x̂`` is always one
of the two codes around ``x``. A constant group has ``scale = 0`` and decodes exactly.

torch only, CPU or CUDA; any floating dtype in, float32 arithmetic. Non-finite values make
their group's scale and offset non-finite (they are not checked, to spare a device sync).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .validation import check_choice, check_int

__all__ = [
    "GroupQuantized",
    "dequantize",
    "load_quantized",
    "pack_int4",
    "quantize",
    "quantized_nbytes",
    "store_quantized",
    "unpack_int4",
]

BITS = (4, 8)


class GroupQuantized(NamedTuple):
    """A tensor quantised group-wise by :func:`quantize`.

    Attributes
    ----------
    codes : uint8 tensor
        ``bits=8``: one code per byte, shape ``(numel_padded,)``. ``bits=4``: two codes per
        byte (low nibble = even index), shape ``(numel_padded // 2,)``.
    scale : float32 tensor of shape (n_groups,)
        ``(max − min) / (2^bits − 1)`` of each group (0 for a constant group).
    offset : float32 tensor of shape (n_groups,)
        Each group's minimum: ``x ≈ offset + code · scale``.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor


def _check_bits_and_group(bits: int, group_size: int) -> None:
    check_choice("bits", bits, BITS)
    check_int("group_size", group_size, minimum=1)
    if bits == 4 and group_size % 2:
        raise ValueError(f"group_size must be even for bits=4 (two codes per byte), got {group_size!r}")


def quantize(
    x: torch.Tensor,
    bits: int,
    group_size: int,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> GroupQuantized:
    """Quantise ``x`` group-wise to ``bits``-bit codes with a float32 scale and minimum per group.

    Parameters
    ----------
    x : floating tensor of any shape
        CPU or CUDA; flattened in row-major order.
    bits : {4, 8}
    group_size : int
        Values per group (≥ 1; even for ``bits=4``).
    stochastic : bool
        Round stochastically (unbiased) instead of to the nearest code.
    generator : torch.Generator, optional
        Source of the uniform draws of stochastic rounding, on ``x``'s device; the global
        generator when omitted.

    Returns
    -------
    GroupQuantized
        On ``x``'s device, ``n_groups = ceil(x.numel() / group_size)``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point torch tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    _check_bits_and_group(bits, group_size)
    levels = 2**bits - 1
    flat = x.detach().reshape(-1).float()
    n_groups = math.ceil(flat.numel() / group_size)
    pad = n_groups * group_size - flat.numel()
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    groups = flat.view(n_groups, group_size)
    offset = groups.amin(dim=1)
    scale = (groups.amax(dim=1) - offset) / levels
    # a constant group has scale 0: divide by 1 instead, every value is then (x − min) = 0 → code 0
    steps = (groups - offset[:, None]) / torch.where(scale > 0, scale, 1.0)[:, None]
    if stochastic:
        noise = torch.rand(steps.shape, generator=generator, device=steps.device, dtype=steps.dtype)
        steps = torch.floor(steps + noise)
    else:
        steps = torch.round(steps)
    # the division can land a rounding error beyond the last level
    codes = steps.clamp_(0, levels).to(torch.uint8).reshape(-1)
    if bits == 4:
        codes = _pack_nibbles(codes)
    return GroupQuantized(codes, scale, offset)


def dequantize(
    q: GroupQuantized,
    shape: Sequence[int],
    bits: int,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The tensor ``offset + code · scale`` of ``shape`` from :func:`quantize`'s output.

    Parameters
    ----------
    q : GroupQuantized
    shape : sequence of ints
        The quantised tensor's shape.
    bits, group_size : int
        As given to :func:`quantize`.
    dtype : torch.dtype
        Of the result (computed in float32), on ``q``'s device.
    """
    _check_bits_and_group(bits, group_size)
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    n_groups = math.ceil(numel / group_size)
    n_codes = n_groups * group_size // (2 if bits == 4 else 1)
    if q.codes.dtype != torch.uint8 or tuple(q.codes.shape) != (n_codes,):
        raise ValueError(
            f"q.codes must be uint8 of shape ({n_codes},) for shape {shape}, bits={bits}, group_size={group_size}; "
            f"got {q.codes.dtype} of shape {tuple(q.codes.shape)}"
        )
    for name in ("scale", "offset"):
        if tuple(getattr(q, name).shape) != (n_groups,):
            raise ValueError(f"q.{name} must have shape ({n_groups},), got {tuple(getattr(q, name).shape)}")
    codes = unpack_int4(q.codes) if bits == 4 else q.codes
    groups = codes.view(n_groups, group_size).float() * q.scale.float()[:, None] + q.offset.float()[:, None]
    return groups.reshape(-1)[:numel].reshape(shape).to(dtype)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    return codes[0::2] | (codes[1::2] << 4)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: ``out[i] = codes[2i] | codes[2i + 1] << 4``.

    Parameters
    ----------
    codes : uint8 tensor of shape (2k,)
        Values in ``0..15``.

    Returns
    -------
    uint8 tensor of shape (k,)
    """
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.dim() != 1:
        raise ValueError(f"codes must be a 1-D uint8 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if codes.numel() % 2:
        raise ValueError(f"codes must have an even length to pack two per byte, got length {codes.numel()}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"codes must be in 0..15 to pack as int4, got a maximum of {int(codes.max())}")
    return _pack_nibbles(codes)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 of shape ``(k,)`` to codes of shape ``(2k,)``."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed must be a 1-D uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    return torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)


def quantized_nbytes(q: GroupQuantized) -> int:
    """Bytes held by ``q``: the codes plus the float32 scale and offset of each group."""
    return sum(t.numel() * t.element_size() for t in q)


def store_quantized(state: dict, name: str, x: torch.Tensor, bits: int, group_size: int) -> None:
    """Quantise ``x`` (nearest rounding) into ``state`` as tensors and numbers only.

    Sets ``{name}_codes``, ``{name}_scale``, ``{name}_offset`` (the :class:`GroupQuantized`
    fields) and ``{name}_bits``, ``{name}_group`` (ints), so a ``torch.optim`` state holding
    them still loads with ``torch.load(weights_only=True)`` and is read back by
    :func:`load_quantized` whatever the current configuration.
    """
    q = quantize(x, bits, group_size)
    state.update(
        {
            f"{name}_codes": q.codes,
            f"{name}_scale": q.scale,
            f"{name}_offset": q.offset,
            f"{name}_bits": bits,
            f"{name}_group": group_size,
        }
    )


def load_quantized(state: dict, name: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The tensor of ``shape`` stored by :func:`store_quantized` under ``name``, dequantised to ``dtype``."""
    q = GroupQuantized(state[f"{name}_codes"], state[f"{name}_scale"], state[f"{name}_offset"])
    return dequantize(q, shape, state[f"{name}_bits"], state[f"{name}_group"], dtype)

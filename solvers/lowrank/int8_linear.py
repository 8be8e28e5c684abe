"""INT8 linear layers for Q-GaLore: the weight lives as 8-bit group-quantised codes, its gradient in a float buffer.

:class:`Int8Linear` replaces ``nn.Linear``: the weight is stored by :func:`optkit.quantization.quantize`
(8-bit codes, one float32 scale and minimum per group of ``group_size`` values), the bias stays a
float parameter. A custom autograd function dequantises the weight in the forward pass and again
in the backward pass, so no float copy of the weight outlives either; the backward returns the
input's gradient and adds the weight's gradient (float32, float64 for float64 inputs) into
``module.weight_grad``, accumulating across micro-batches like ``.grad``.

How an optimizer trains it: the codes ``weight_codes`` are an ``nn.Parameter`` that does not
require grad (uint8 cannot); ``weight_scale`` and ``weight_offset`` are float32 parameters that do
not require grad either, so ``model.parameters()`` counts every stored byte of the weight and
``model.to(...)``, ``state_dict()`` and DDP's initial broadcast carry them. An optimizer is given
the code tensor in a param group and finds its layer with :func:`quantized_linear_of`; it reads
``weight_grad``, dequantises, updates and writes the weight back with :meth:`Int8Linear.set_weight`
(in place: the parameters keep their identity). :class:`~solvers.lowrank.q_galore.QGaLoreAdamW` and
:class:`~solvers.lowrank.q_galore.QGaLoreAdamW8bit` do this and clear ``weight_grad`` in ``zero_grad``.

The backward runs even when nothing else in the graph requires grad (a frozen embedding below
the first layer): the forward then passes the autograd function an empty tensor that requires
grad, so the output is part of the graph (the failure of musubi-tuner#90, where such a weight was
silently never trained, cannot happen).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from optkit.quantization import GroupQuantized, dequantize, quantize
from optkit.validation import check_int

from .param_groups import select_linear_modules

__all__ = ["WEIGHT_BITS", "Int8Linear", "quantize_linear_layers", "quantized_linear_of"]

WEIGHT_BITS = 8

# code tensor -> weak reference to its layer; entries go with the code tensors
_LAYERS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def quantized_linear_of(p: torch.Tensor) -> Int8Linear | None:
    """The :class:`Int8Linear` whose ``weight_codes`` is ``p``, or ``None`` for any other tensor."""
    ref = _LAYERS.get(p)
    return None if ref is None else ref()


class _Int8LinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` with ``W`` dequantised from the layer's codes in forward and again in backward."""

    @staticmethod
    def forward(ctx, x, bias, anchor, layer):
        weight = layer.dequantized_weight(x.dtype)
        # the codes, scales and minima are saved so that a weight changed before this backward is an error
        ctx.save_for_backward(x, layer.weight_codes, layer.weight_scale, layer.weight_offset)
        ctx.layer = layer
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, _, _, _ = ctx.saved_tensors
        layer = ctx.layer
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ layer.dequantized_weight(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        accumulate = torch.promote_types(x.dtype, torch.float32)
        rows_out = grad_out.reshape(-1, grad_out.shape[-1]).to(accumulate)
        layer.accumulate_weight_grad(rows_out.mT @ x.reshape(-1, x.shape[-1]).to(accumulate))
        return grad_x, grad_bias, None, None


class Int8Linear(torch.nn.Module):
    """A linear layer whose weight is stored as 8-bit group-quantised codes (see the module docstring).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
        A float bias (trained as a usual parameter).
    group_size : int
        Weight values per quantisation group (default 256, Q-GaLore's); the last group of the
        flattened weight is padded.
    device, dtype : optional
        Of the bias (the weight's scales and minima are float32, its codes uint8).

    Attributes
    ----------
    weight_codes : nn.Parameter, uint8, shape (ceil(out·in / group_size) · group_size,)
    weight_scale, weight_offset : nn.Parameter, float32, shape (groups,)
        ``W ≈ offset + code · scale`` group-wise (:func:`optkit.quantization.dequantize`).
    weight_grad : tensor of shape (out_features, in_features) or None
        The weight gradient accumulated by backward passes since it was last cleared
        (float32; float64 for float64 inputs).

    Notes
    -----
    Memory: ``weight_codes.numel()`` bytes plus 8 bytes per group, and the float gradient
    buffer while it exists. ``Module.to(dtype)`` casts the bias only: the scales and minima stay
    float32. A fresh layer's weight is ``nn.Linear``'s initialisation,
    quantised; :meth:`from_linear` quantises a trained one. Inputs of any floating dtype
    ``(..., in_features)``, CPU or CUDA.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        group_size: int = 256,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int("in_features", in_features, 1)
        check_int("out_features", out_features, 1)
        self._adopt(torch.nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype), group_size)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, *, group_size: int = 256) -> Int8Linear:
        """An :class:`Int8Linear` holding ``linear``'s weight quantised (nearest rounding) and its bias
        parameter itself (the same tensor)."""
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer._adopt(linear, group_size)
        return layer

    def _adopt(self, linear: torch.nn.Linear, group_size: int) -> None:
        self.group_size = check_int("group_size", group_size, 1)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q = quantize(linear.weight.detach(), WEIGHT_BITS, self.group_size)
        self.weight_codes = torch.nn.Parameter(q.codes, requires_grad=False)
        self.weight_scale = torch.nn.Parameter(q.scale, requires_grad=False)
        self.weight_offset = torch.nn.Parameter(q.offset, requires_grad=False)
        self.bias = linear.bias
        self.weight_grad: torch.Tensor | None = None
        # an OrderedDict, as torch's hook tables: RemovableHandle keeps a weak reference to it
        self._weight_hooks: OrderedDict[int, Callable[[Int8Linear], None]] = OrderedDict()
        _LAYERS[self.weight_codes] = weakref.ref(self)

    def __setstate__(self, state):
        # a deep copy or unpickled copy has new code tensors: they must find this layer too
        super().__setstate__(state)
        _LAYERS[self.weight_codes] = weakref.ref(self)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype), .half() and .bfloat16() cast every floating parameter: the scales and minima
        # are put back in float32, from copies made before the cast, so they lose nothing
        kept = {name: getattr(self, name).detach().clone() for name in ("weight_scale", "weight_offset")}
        super()._apply(fn, recurse)
        for name, value in kept.items():
            param = getattr(self, name)
            param.data = value.to(param.device)
        return self

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight ``offset + code · scale``, shape ``(out_features, in_features)``, in ``dtype``."""
        q = GroupQuantized(self.weight_codes, self.weight_scale, self.weight_offset)
        return dequantize(q, self.weight_shape, WEIGHT_BITS, self.group_size, dtype)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor, *, generator: torch.Generator | None = None) -> None:
        """Quantise ``weight`` (shape ``(out_features, in_features)``) into this layer, in place.

        Rounds to the nearest code, or stochastically (unbiased) with the uniform draws of
        ``generator`` (on the weight's device) when one is given.
        """
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"weight must have shape {self.weight_shape}, got {tuple(weight.shape)}")
        q = quantize(weight, WEIGHT_BITS, self.group_size, stochastic=generator is not None, generator=generator)
        self.weight_codes.copy_(q.codes)
        self.weight_scale.copy_(q.scale)
        self.weight_offset.copy_(q.offset)

    def gradient_tensors(self) -> list[torch.Tensor]:
        """The gradients this layer keeps outside ``.grad`` (``weight_grad``, when it exists): what
        :func:`optkit.torch_optim.state_bytes` counts as gradient memory besides the parameters' ``.grad``."""
        return [] if self.weight_grad is None else [self.weight_grad]

    def clear_weight_grad(self, set_to_none: bool = True) -> None:
        """Forget :attr:`weight_grad` (``set_to_none``) or zero it in place: ``zero_grad`` for the INT8 weight."""
        if self.weight_grad is None:
            return
        if set_to_none:
            self.weight_grad = None
        else:
            self.weight_grad.zero_()

    def accumulate_weight_grad(self, grad: torch.Tensor) -> None:
        """Add ``grad`` to :attr:`weight_grad` (what the backward pass does), then run the weight hooks."""
        if self.weight_grad is None:
            self.weight_grad = grad
        else:
            self.weight_grad += grad
        for hook in list(self._weight_hooks.values()):
            hook(self)

    def register_weight_grad_hook(self, hook: Callable[[Int8Linear], None]) -> torch.utils.hooks.RemovableHandle:
        """Call ``hook(layer)`` after each backward pass has accumulated this layer's weight gradient.

        The INT8 weight's counterpart of ``Tensor.register_post_accumulate_grad_hook``, with one
        difference: a layer called several times in one forward pass runs its hooks after each of
        its backward passes (a hook that changes the weight then makes the next one an autograd
        error, since the backward pass checks the codes it saved).
        """
        handle = torch.utils.hooks.RemovableHandle(self._weight_hooks)
        self._weight_hooks[handle.id] = hook
        return handle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have {self.in_features} features in its last dimension, got shape {tuple(x.shape)}"
            )
        if not torch.is_grad_enabled():
            return torch.nn.functional.linear(x, self.dequantized_weight(x.dtype), self.bias)
        anchor = torch.empty(0, device=x.device, requires_grad=True)
        return _Int8LinearFunction.apply(x, self.bias, anchor, self)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight_bits={WEIGHT_BITS}, group_size={self.group_size}"
        )


def quantize_linear_layers(
    model: torch.nn.Module, target: str | Sequence[str] = "all-linear", *, group_size: int = 256
) -> list[str]:
    """Replace the ``nn.Linear`` modules of ``model`` that ``target`` selects by :class:`Int8Linear`, in place.

    Parameters
    ----------
    model : torch.nn.Module
    target : str or sequence of str
        As :func:`solvers.lowrank.param_groups.select_linear_modules` (``"all-linear"``: every
        linear layer but the output layer; a regular expression; or module names).
    group_size : int
        Weight values per quantisation group.

    Returns
    -------
    list of str
        The names of the replaced modules.

    Raises
    ------
    ValueError
        When ``target`` selects nothing (the message lists the linear modules) or ``group_size``
        is not a positive integer; the model is then unchanged.
    """
    check_int("group_size", group_size, 1)
    names = select_linear_modules(model, target)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(getattr(parent, child), group_size=group_size))
    return names

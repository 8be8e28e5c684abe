"""One-shot pruning of a torch model: Optimal Brain Surgeon with the M-FAC inverse Fisher, and magnitude baselines.

:func:`mfac_prune` is the OBS pruner of M-FAC (Frantar, Kurtic & Alistarh, NeurIPS 2021; the
reference's ``MFACPruner`` with ``gradual_prun``'s ``nrecomps`` sub-steps). Each sub-step
collects gradients of the loss, builds the inverse of the damped empirical Fisher
``F = damp * I + (1/m) sum_i g_i g_i^T`` over the weights still kept
(:class:`~solvers.curvature.mfac_inverse.BlockMFACInverse`, or the full
:class:`~solvers.curvature.mfac_inverse.MFACInverse`), scores each weight by the loss increase
OBS predicts for removing it alone, ``rho_i = w_i^2 / (2 [F^-1]_ii)``, removes the lowest,
and moves the remaining weights to compensate: ``w += F^-1 t`` with ``t_Q = -w_Q / [F^-1]_QQ``
on the removed set ``Q`` (zero elsewhere), the removed weights then set exactly to zero.

:func:`magnitude_prune` (each parameter to the same sparsity by ``|w|``) and
:func:`global_magnitude_prune` (one ``|w|`` threshold over all selected weights, the
reference's ``MagPruner``) are the baselines. All three prune in place and return masks,
``{parameter name: bool tensor}`` with ``True`` for a kept weight; :func:`apply_masks` zeroes
the pruned weights again (after each masked fine-tuning step). torch only, CPU or CUDA.

Counting: a sparsity ``s`` over ``n`` weights means exactly ``round(s * n)`` zeros (masked
entries; ties in a ranking go to the lower flat index).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from optkit.linop import diagonal
from optkit.validation import check_int, check_positive

from .mfac_inverse import BlockMFACInverse, MFACInverse

__all__ = ["apply_masks", "global_magnitude_prune", "magnitude_prune", "mfac_prune", "sparsity_of"]

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _zeros_for(sparsity: float, numel: int) -> int:
    return round(sparsity * numel)


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` smallest scores; a stable sort so that ties are deterministic."""
    return torch.argsort(scores, stable=True)[:count]


def _prune_lowest(scores: torch.Tensor, kept: torch.Tensor, count: int) -> torch.Tensor:
    """``kept`` (a flat mask) with its ``count`` kept entries of lowest ``scores`` (same shape) masked out."""
    positions = kept.nonzero().squeeze(1)
    new = kept.clone()
    new[positions[_lowest(scores[positions], count)]] = False
    return new


def _check_room(zeros: int, pruned: int, what: str) -> None:
    if pruned > zeros:
        raise ValueError(f"masks already prune {pruned} weights of {what}, more than the {zeros} the sparsity asks")


class _Selection:
    """The parameters being pruned, in order, with their masks: the one place that selects and flattens.

    ``params`` are parameter names (default: the ``.weight`` of every ``nn.Linear`` and
    ``nn.Conv{1,2,3}d``); ``masks`` may give a starting mask for some of them (others start
    fully kept). Everything is validated here, before any pruner changes the model.
    """

    def __init__(self, model: nn.Module, params: Sequence[str] | None, masks: Mapping[str, torch.Tensor] | None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        named = dict(model.named_parameters())
        if params is None:
            name_of = {id(p): n for n, p in named.items()}
            params = list(
                dict.fromkeys(
                    name_of[id(m.weight)]
                    for m in model.modules()
                    if isinstance(m, _PRUNABLE) and isinstance(m.weight, nn.Parameter) and id(m.weight) in name_of
                )
            )
            if not params:
                raise ValueError("model has no nn.Linear or nn.Conv1d/2d/3d weight to prune; pass params=[names]")
        else:
            if isinstance(params, str) or not all(isinstance(p, str) for p in params):
                raise TypeError(f"params must be a sequence of parameter names, got {params!r}")
            params = list(dict.fromkeys(params))
            unknown = [p for p in params if p not in named]
            if unknown:
                raise ValueError(f"params names unknown parameters {unknown}; the model has {list(named)}")
            if not params:
                raise ValueError("params is empty: nothing to prune")
        self.names: list[str] = params
        self.tensors: list[nn.Parameter] = [named[n] for n in params]
        first = self.tensors[0]
        for name, p in zip(self.names, self.tensors):
            if not p.is_floating_point():
                raise TypeError(f"parameter {name!r} is {p.dtype}, not floating point")
            if p.device != first.device or p.dtype != first.dtype:
                raise ValueError(
                    f"the pruned parameters must share one device and dtype: {self.names[0]!r} is "
                    f"{first.dtype} on {first.device}, {name!r} is {p.dtype} on {p.device}"
                )
        self.numels = [p.numel() for p in self.tensors]
        self.masks = self._read_masks(masks)

    def _read_masks(self, masks: Mapping[str, torch.Tensor] | None) -> list[torch.Tensor]:
        masks = {} if masks is None else masks
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks must be a mapping from parameter name to bool tensor, got {type(masks).__name__}")
        extra = sorted(set(masks) - set(self.names))
        if extra:
            raise ValueError(f"masks has entries {extra} for parameters that are not being pruned ({self.names})")
        out = []
        for name, p in zip(self.names, self.tensors):
            mask = masks.get(name)
            if mask is None:
                out.append(torch.ones(p.shape, dtype=torch.bool, device=p.device))
                continue
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != p.shape:
                got = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else repr(mask)
                raise ValueError(f"masks[{name!r}] must be a bool tensor of shape {tuple(p.shape)}, got {got}")
            out.append(mask.to(p.device, copy=True))
        return out

    @property
    def numel(self) -> int:
        return sum(self.numels)

    def flat_mask(self) -> torch.Tensor:
        return torch.cat([m.reshape(-1) for m in self.masks])

    def set_flat_mask(self, flat: torch.Tensor) -> None:
        self.masks = [chunk.reshape(m.shape).clone() for chunk, m in zip(flat.split(self.numels), self.masks)]

    @torch.no_grad()
    def flat_weights(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.tensors])

    @torch.no_grad()
    def write(self, flat: torch.Tensor) -> None:
        for p, chunk in zip(self.tensors, flat.split(self.numels)):
            p.copy_(chunk.reshape(p.shape))

    @torch.no_grad()
    def apply(self) -> None:
        for p, mask in zip(self.tensors, self.masks):
            p.masked_fill_(~mask, 0)

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.tensors]

    @torch.no_grad()
    def restore(self, saved: list[torch.Tensor]) -> None:
        for p, value in zip(self.tensors, saved):
            p.copy_(value)

    def mask_dict(self) -> dict[str, torch.Tensor]:
        return {name: mask.clone() for name, mask in zip(self.names, self.masks)}


def magnitude_prune(
    model: nn.Module,
    sparsity: float,
    *,
    params: Sequence[str] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Layer-wise magnitude pruning: each selected parameter loses its ``round(sparsity * numel)`` smallest ``|w|``.

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place: the pruned weights become exactly 0.
    sparsity : float in [0, 1)
        Fraction of zeros of each selected parameter afterwards (masked entries count).
    params : sequence of str, optional
        Names (as in ``model.named_parameters()``) of the parameters to prune; default the
        ``.weight`` of every ``nn.Linear`` and ``nn.Conv1d/2d/3d``.
    masks : mapping of str to bool tensor, optional
        Masks to start from (``True`` = kept, the parameter's shape); already-pruned weights
        stay pruned and are zeroed.

    Returns
    -------
    dict of str to torch.BoolTensor
        One mask per selected parameter, its shape, on its device; ``True`` = kept.

    Raises
    ------
    ValueError
        ``sparsity`` outside [0, 1), unknown names, masks of the wrong shape or dtype, or a
        mask that already prunes more than ``sparsity`` of its parameter (before any change).
    """
    sparsity = _check_sparsity(sparsity)
    selection = _Selection(model, params, masks)
    for name, numel, mask in zip(selection.names, selection.numels, selection.masks):
        _check_room(_zeros_for(sparsity, numel), numel - int(mask.sum()), repr(name))
    selection.apply()
    new_masks = []
    for p, numel, mask in zip(selection.tensors, selection.numels, selection.masks):
        kept = mask.reshape(-1)
        count = _zeros_for(sparsity, numel) - (numel - int(kept.sum()))
        new_masks.append(_prune_lowest(p.detach().reshape(-1).abs(), kept, count))
    selection.set_flat_mask(torch.cat(new_masks))
    selection.apply()
    return selection.mask_dict()


def global_magnitude_prune(
    model: nn.Module,
    sparsity: float,
    *,
    params: Sequence[str] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Global magnitude pruning: the ``round(sparsity * n)`` smallest ``|w|`` over all ``n`` selected weights.

    One threshold for every selected parameter together (the M-FAC reference's
    ``MagPruner``), so layers of small weights lose more. Parameters, returns and errors as
    :func:`magnitude_prune`, except that ``sparsity`` and the masks' room are counted over all
    selected weights together.
    """
    sparsity = _check_sparsity(sparsity)
    selection = _Selection(model, params, masks)
    kept = selection.flat_mask()
    zeros = _zeros_for(sparsity, selection.numel)
    _check_room(zeros, selection.numel - int(kept.sum()), "the selected parameters")
    selection.apply()
    count = zeros - (selection.numel - int(kept.sum()))
    selection.set_flat_mask(_prune_lowest(selection.flat_weights().abs(), kept, count))
    selection.apply()
    return selection.mask_dict()


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero, in place, the weights that ``masks`` prunes (``False``); the step after each masked fine-tuning update.

    Parameters
    ----------
    model : torch.nn.Module
    masks : mapping of str to bool tensor
        As returned by the pruners: parameter name to a mask of its shape (``True`` = kept).
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("masks must be a non-empty mapping from parameter name to bool tensor")
    _Selection(model, list(masks), masks).apply()


def sparsity_of(model: nn.Module, params: Sequence[str] | None = None) -> float:
    """Fraction of exactly-zero entries over the selected parameters (default: Linear and Conv weights)."""
    selection = _Selection(model, params, None)
    return float((selection.flat_weights() == 0).sum()) / selection.numel


def _kept_schedule(kept_now: int, kept_final: int, steps: int) -> list[int]:
    """Kept counts after each of ``steps`` sub-steps: ``round(kept_now * (kept_final / kept_now) ** (j / steps))``,
    the density falling geometrically (the reference's ``nrecomps``), ending exactly at ``kept_final``."""
    if kept_now == kept_final:
        return []
    ratio = kept_final / kept_now
    return [round(kept_now * ratio ** (j / steps)) for j in range(1, steps)] + [kept_final]


class _BatchSource:
    """Hands out ``num_grads`` batches per sub-step: an iterator is consumed on, anything else re-iterated."""

    def __init__(self, batches: Iterable[Any], num_grads: int, sub_steps: int):
        if not isinstance(batches, Iterable):
            raise TypeError(f"batches must be an iterable of batches, got {type(batches).__name__}")
        self.one_pass = isinstance(batches, Iterator)
        self.batches = batches
        self.num_grads = num_grads
        self.needed = num_grads * sub_steps if self.one_pass else num_grads
        self.given = 0
        if not self.one_pass and hasattr(batches, "__len__") and len(batches) < num_grads:
            raise ValueError(self._shortage(len(batches)))

    def _shortage(self, got: int) -> str:
        if self.one_pass:
            return (
                f"batches ran out after {got}: an iterator must yield num_grads * (sub-steps that prune) = "
                f"{self.needed} batches (num_grads={self.num_grads})"
            )
        return f"batches holds {got} batches; each sub-step needs num_grads={self.num_grads} of them"

    def sub_step(self) -> Iterator[Any]:
        stream = self.batches if self.one_pass else iter(self.batches)
        for count in range(self.num_grads):
            try:
                yield next(stream)
            except StopIteration:
                raise ValueError(self._shortage(self.given if self.one_pass else count)) from None
            self.given += 1


def _gradients(
    model: nn.Module, loss_fn: Callable, batches: Iterator[Any], selection: _Selection, kept_idx: torch.Tensor, m: int
) -> torch.Tensor:
    """The ``(m, kept)`` gradients of ``loss_fn`` over the kept coordinates, one batch each."""
    grads = torch.empty((m, kept_idx.numel()), dtype=selection.tensors[0].dtype, device=kept_idx.device)
    with torch.enable_grad():
        for row, batch in enumerate(batches):
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
            parts = torch.autograd.grad(loss.reshape(()), selection.tensors, allow_unused=True)
            flat = torch.cat(
                [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(parts, selection.tensors)]
            )
            grads[row] = flat.index_select(0, kept_idx)
            if not torch.isfinite(grads[row]).all():
                raise ValueError(f"the gradient of loss_fn on batch {row} of this sub-step is not finite")
    return grads


def mfac_prune(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    sparsity: float,
    *,
    params: Sequence[str] | None = None,
    num_grads: int = 64,
    block_size: int | None = 128,
    damp: float = 1e-5,
    recomputations: int = 16,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """One-shot OBS pruning with the M-FAC inverse empirical Fisher, in place.

    The ``n`` selected weights end with exactly ``round(sparsity * n)`` zeros, ranked globally.
    The kept count falls geometrically over ``recomputations`` sub-steps, from ``k0`` (kept
    now) to ``kF = n - round(sparsity * n)``: after sub-step ``j`` it is
    ``round(k0 * (kF / k0) ** (j / recomputations))``. Each sub-step that removes weights:

    1. collects ``num_grads`` gradients ``g_i`` of ``loss_fn(model, batch)``, one batch each,
       restricted to the ``k`` weights still kept (model in eval mode, as the reference);
    2. builds ``F^-1`` for ``F = damp * I + (1/num_grads) sum_i g_i g_i^T`` (block-diagonal in
       contiguous blocks of ``block_size`` kept coordinates, or full when ``None``);
    3. scores ``rho_i = w_i^2 / (2 [F^-1]_ii)`` and removes the lowest (set ``Q``);
    4. updates ``w += F^-1 t`` with ``t_Q = -w_Q / [F^-1]_QQ``, ``t = 0`` elsewhere, then sets
       ``w_Q = 0`` exactly.

    Parameters
    ----------
    model : torch.nn.Module
        Pruned in place; left in the train/eval mode each of its modules had.
    loss_fn : callable ``(model, batch) -> torch.Tensor``
        The scalar loss of one batch (e.g. the mean cross-entropy of a minibatch).
    batches : iterable
        Batches for ``loss_fn``. An iterator (a generator) is consumed on, ``num_grads`` per
        sub-step that prunes; any other iterable (a list, a ``DataLoader``) is iterated anew
        in each sub-step and must yield ``num_grads`` batches each time.
    sparsity : float in [0, 1)
        Fraction of zeros over all selected weights together afterwards.
    params : sequence of str, optional
        Names of the parameters to prune; default the ``.weight`` of every ``nn.Linear`` and
        ``nn.Conv1d/2d/3d``. They must share one device and floating dtype, which the
        gradients and ``F^-1`` use.
    num_grads : int, default 64
        ``m``, the gradients per sub-step (the reference's gradient loop keeps ``m - 1``;
        here exactly ``m``).
    block_size : int or None, default 128
        Size of the Fisher's diagonal blocks over the kept coordinates (last block shorter);
        ``None`` for the full ``MFACInverse``.
    damp : float, default 1e-5
        ``lambda > 0``.
    recomputations : int, default 16
        Sub-steps, each with fresh gradients and a fresh ``F^-1``.
    masks : mapping of str to bool tensor, optional
        Masks to start from (``True`` = kept); already-pruned weights stay zero.

    Returns
    -------
    dict of str to torch.BoolTensor
        One mask per selected parameter (its shape and device), ``True`` = kept.

    Raises
    ------
    ValueError
        Before any work: ``sparsity`` outside [0, 1), ``num_grads < 1``, ``damp <= 0``,
        ``recomputations < 1``, ``block_size < 1``, unknown parameter names, bad masks, masks
        that already prune more than ``sparsity``, a sized ``batches`` shorter than
        ``num_grads``. During the work (the selected weights are then restored): ``batches``
        running out (the message says how many were needed) or a non-finite gradient.
    TypeError
        ``loss_fn`` not callable, ``batches`` not iterable, or a loss that is not a scalar tensor.
    """
    sparsity = _check_sparsity(sparsity)
    num_grads = check_int("num_grads", num_grads, 1)
    damp = check_positive("damp", damp)
    recomputations = check_int("recomputations", recomputations, 1)
    if block_size is not None:
        block_size = check_int("block_size", block_size, 1)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (model, batch) -> scalar tensor, got {type(loss_fn).__name__}")
    selection = _Selection(model, params, masks)
    kept = selection.flat_mask()
    zeros = _zeros_for(sparsity, selection.numel)
    _check_room(zeros, selection.numel - int(kept.sum()), "the selected parameters")
    schedule = _kept_schedule(int(kept.sum()), selection.numel - zeros, recomputations)
    pruning_steps = sum(1 for before, after in zip([int(kept.sum())] + schedule, schedule) if after < before)
    source = _BatchSource(batches, num_grads, pruning_steps)

    saved = selection.snapshot()
    modes = [(module, module.training) for module in model.modules()]
    try:
        selection.apply()
        for kept_after in schedule:
            count = int(kept.sum()) - kept_after
            if count == 0:
                continue
            kept_idx = kept.nonzero().squeeze(1)
            model.eval()
            grads = _gradients(model, loss_fn, source.sub_step(), selection, kept_idx, num_grads)
            for module, training in modes:
                module.training = training
            inverse = MFACInverse(grads, damp) if block_size is None else BlockMFACInverse(grads, damp, block_size)
            del grads
            inv_diag = diagonal(inverse)
            w = selection.flat_weights()
            w_kept = w.index_select(0, kept_idx)
            drop = _lowest(w_kept**2 / (2 * inv_diag), count)
            t = torch.zeros_like(w_kept)
            t[drop] = -w_kept[drop] / inv_diag[drop]
            w_kept = w_kept + inverse.matvec(t)
            w_kept[drop] = 0
            w[kept_idx] = w_kept
            kept[kept_idx[drop]] = False
            selection.write(w)
    except BaseException:
        selection.restore(saved)
        raise
    finally:
        for module, training in modes:
            module.training = training
    selection.set_flat_mask(kept)
    return selection.mask_dict()

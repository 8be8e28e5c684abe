"""What a torch optimizer keeps between steps: its bytes, its dtypes through a state_dict
round trip, and its projector refresh time. Public names are re-exported from
:mod:`optkit.torch_optim`; torch is imported inside the functions."""

from __future__ import annotations

import itertools
import math
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["restore_state_dtypes", "state_bytes"]


def _tensors(obj: Any, depth: int = 0) -> Iterator[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4:
        if isinstance(obj, dict):
            values = obj.values()
        elif isinstance(obj, (list, tuple)):
            values = obj
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType, torch.nn.Module)):
            # a projector object kept in the state (galore_torch's GaLoreProjector holds its basis so)
            values = vars(obj).values()
        else:
            return
        for value in values:
            yield from _tensors(value, depth + 1)


def _nbytes(tensors: Iterator[Any], seen: set) -> int:
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key not in seen and storage.data_ptr() != 0:
            seen.add(key)
            total += storage.nbytes()
    return total


def state_bytes(model: Any, optimizer: Any) -> dict[str, int]:
    """Bytes of the training tensors that live between steps, each storage counted once.

    Returns
    -------
    dict
        ``params`` (model parameters), ``grads`` (their ``.grad`` tensors that exist now, and
        the tensors of every submodule's ``gradient_tensors()`` method: gradients a module keeps
        outside ``.grad``, such as an INT8 layer's float weight gradient) and ``optimizer``
        (every tensor reachable from ``optimizer.state``: moments, 8-bit states and their
        quantisation maps, projector bases, including tensors held by projector objects).
        Activations, autograd buffers and temporaries are not included.
    """
    seen: set = set()
    params = list(model.parameters())
    out = {"params": _nbytes(iter(params), seen)}
    kept = [t for m in model.modules() if hasattr(m, "gradient_tensors") for t in m.gradient_tensors()]
    out["grads"] = _nbytes(itertools.chain((p.grad for p in params if p.grad is not None), kept), seen)
    out["optimizer"] = _nbytes(_tensors(list(optimizer.state.values())), seen)
    return out


def restore_state_dtypes(optimizer: Any, state_dict: dict[str, Any]) -> None:
    """Give the state just loaded by ``Optimizer.load_state_dict`` the dtypes it was saved with.

    ``torch.optim.Optimizer.load_state_dict`` casts every state tensor (except ``step``) to
    its parameter's dtype: that turns integer and boolean state (uint8 8-bit moments, int32
    DCT indices, masks) into floats (integers above 256 are rounded for bf16 parameters) and
    float32 state of bf16 parameters (moments, quantization scales, gradient windows) into
    bf16. An optimizer's ``load_state_dict`` calls this right after it, with the same
    ``state_dict``; tensors whose dtype was changed are taken from ``state_dict`` again,
    moved to the parameter's device.
    """
    saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = itertools.chain.from_iterable(g["params"] for g in optimizer.param_groups)
    for saved_id, p in zip(saved_ids, params):
        if saved_id in state_dict["state"]:
            optimizer.state[p] = _with_saved_dtypes(optimizer.state[p], state_dict["state"][saved_id], p.device)


def _with_saved_dtypes(loaded: Any, saved: Any, device: Any) -> Any:
    import torch

    if torch.is_tensor(saved):
        return loaded if loaded.dtype == saved.dtype else saved.to(device)
    if isinstance(saved, dict):
        return {key: _with_saved_dtypes(loaded[key], value, device) for key, value in saved.items()}
    return loaded


def _refresh_seconds(optimizer: Any) -> float | None:
    """The optimizer's cumulative projector refresh time (summed over a layer-wise wrapper's inner
    optimizers), or ``None`` when it keeps no such timer."""
    inner = getattr(optimizer, "inner_optimizers", None)
    timers = [getattr(o, "projector_refresh_seconds", None) for o in (inner or [optimizer])]
    timers = [t for t in timers if t is not None]
    return math.fsum(timers) if timers else None

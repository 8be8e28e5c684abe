"""Curvature-based methods: M-FAC inverse-Fisher products, the M-FAC optimizer and OBS pruning.

Nothing heavy (torch) is imported here, because the registry imports every solver package:
the torch parts are loaded on first access, ``from solvers.curvature import MFAC``.
"""

import importlib

from . import recipes
from .mfac_inverse import BlockMFACInverse, MFACInverse, empirical_fisher

_LAZY = {"MFAC": "mfac_optimizer"}

__all__ = ["MFAC", "BlockMFACInverse", "MFACInverse", "empirical_fisher", "recipes"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

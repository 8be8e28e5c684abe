"""Curvature-based methods: M-FAC inverse-Fisher products, the M-FAC optimizer and OBS pruning.

Nothing heavy (torch) is imported here, because the registry imports every solver package:
the torch parts are loaded on first access, ``from solvers.curvature import MFAC``.
"""

import importlib

from . import recipes
from .mfac_inverse import BlockMFACInverse, MFACInverse, empirical_fisher

_LAZY = {
    "MFAC": "mfac_optimizer",
    "apply_masks": "obs_pruning",
    "global_magnitude_prune": "obs_pruning",
    "magnitude_prune": "obs_pruning",
    "mfac_prune": "obs_pruning",
    "sparsity_of": "obs_pruning",
}

__all__ = [
    "MFAC",
    "BlockMFACInverse",
    "MFACInverse",
    "apply_masks",
    "empirical_fisher",
    "global_magnitude_prune",
    "magnitude_prune",
    "mfac_prune",
    "recipes",
    "sparsity_of",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

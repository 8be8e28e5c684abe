"""GaLore-family low-rank optimizers and layer-wise stepping.

Nothing heavy (torch) is imported here, because the registry imports every solver package:
the optimizers are loaded on first access, ``from solvers.lowrank import GaLoreAdamW``.
"""

import importlib

from . import recipes

_LAZY = {
    "GaLoreAdamW": "galore_adamw",
    "GaLoreAdafactor": "galore_adafactor",
    "GaLoreAdamW8bit": "galore_adamw8bit",
    "LayerwiseOptimizer": "layerwise",
    "Int8Linear": "int8_linear",
    "quantize_linear_layers": "int8_linear",
    "QGaLoreAdamW": "q_galore",
    "QGaLoreAdamW8bit": "q_galore",
    "q_galore_param_groups": "q_galore",
    "galore_param_groups": "param_groups",
    "select_linear_modules": "param_groups",
    "GradNormLoRPAdamW": "gradnorm_lorp",
    "GradNormLoRPAdamW8bit": "gradnorm_lorp",
    "OwLoreAdamW": "owlore",
    "find_layers": "owlore",
    "layer_outlier_ratios": "owlore",
    "owlore_param_groups": "owlore",
    "sample_layers": "owlore",
}

__all__ = sorted(_LAZY)
__all__ += ["recipes"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

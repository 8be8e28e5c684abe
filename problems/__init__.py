"""optkit's problem suite (the ``optkit.problems`` entry point).

Importing this package registers every problem family and suite; heavy optional
dependencies (scikit-learn ...) are imported only when a problem that needs them is built.
"""

from . import (
    bcd_paper,
    composite,
    curvature,
    cutest,
    libsvm,
    linear,
    linear_models,
    llm,
    ml,
    mnist,
    ot,
    pde_control,
    pressure,
    text_classification,
)

__all__ = [
    "bcd_paper",
    "composite",
    "curvature",
    "cutest",
    "libsvm",
    "linear",
    "linear_models",
    "llm",
    "ml",
    "mnist",
    "ot",
    "pde_control",
    "pressure",
    "text_classification",
]

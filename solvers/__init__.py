"""optkit's solvers, ours and the wrapped baselines (the ``optkit.solvers`` entry point).

Importing this package registers every solver. Nothing heavy is imported here: pyamg,
scikit-learn and torch are imported inside ``solve`` when a solver needs them.
"""

from . import baselines, bcd, constrained, curvature, linear, lowrank, ot

__all__ = ["baselines", "bcd", "constrained", "curvature", "linear", "lowrank", "ot"]

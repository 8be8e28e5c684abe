"""Block coordinate descent (solver ``bcd``): partition x selection x update rules.

The registries :data:`~.partitions.PARTITIONS`, :data:`~.selection.SELECTIONS` and
:data:`~.updates.UPDATES` map option names to small rule objects; adding a rule is one
entry there (see each module's docstring for the contract).
"""

from . import bcd
from .bcd import BCD

__all__ = ["BCD", "bcd"]

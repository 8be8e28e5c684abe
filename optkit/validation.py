"""Argument checks shared by problems and solvers: each error names the argument and what was expected."""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

__all__ = ["check_choice", "check_int", "check_nonnegative", "check_positive"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int; ``ValueError`` unless it is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value``; ``ValueError`` listing ``choices`` unless it is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` as a float; ``ValueError`` unless it is a finite real number ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float; ``ValueError`` unless it is a finite real number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)

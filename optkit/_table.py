"""Plain-text and markdown tables, and the number formats the benchmark tables share."""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["fmt_float", "fmt_time", "markdown_table", "text_table"]


def fmt_float(value: Any, digits: int = 3) -> str:
    """``1.234e-09``-style text for a float, ``""`` for ``None``/NaN, ints as ints."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}" if v == 0 or 1e-3 <= abs(v) < 1e5 else f"{v:.{digits - 1}e}"


def fmt_time(seconds: Any) -> str:
    """Seconds with a unit chosen for readability: ``"812us"``, ``"35.2ms"``, ``"4.10s"``."""
    if seconds is None:
        return ""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if math.isnan(s):
        return ""
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1.0:
        return f"{s * 1e3:.1f}ms"
    return f"{s:.2f}s"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """A fixed-width table: a header line, a rule, one line per row (cells as ``str``).

    ``right[j]`` right-aligns column ``j`` (numbers); left alignment otherwise.
    """
    cells = [[str(c) for c in row] for row in rows]
    right = list(right) if right is not None else [False] * len(headers)
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(items, widths, right)).rstrip()

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured markdown table; ``|`` inside cells is escaped."""
    right = list(right) if right is not None else [False] * len(headers)

    def esc(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(esc(h) for h in headers) + " |"]
    out.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    out.extend("| " + " | ".join(esc(c) for c in row) + " |" for row in rows)
    return "\n".join(out)

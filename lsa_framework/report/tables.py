"""One Markdown table writer, so that every report and benchmark lays its tables out the same way.

    markdown_table(["run", "seconds"], [["wanda", 1.234]], align="lr")
    # | run | seconds |
    # | :--- | ---: |
    # | wanda | 1.23 |

Cells are formatted by :func:`cell`: floats with ``digits`` decimals (scientific from 1e6, so a
diverged perplexity stays readable), None as "–", anything else with ``str``; a ``|`` inside a cell is
escaped so that it cannot split the row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

#: alignment letter -> the separator row's cell
_RULES = {"l": ":---", "r": "---:", "c": ":---:", "-": "---"}


def cell(value: Any, digits: int = 2) -> str:
    """One cell's text."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isfinite(value) and abs(value) >= 1e6:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None, digits: int = 2
) -> str:
    """A Markdown table; ``align`` has one letter per column (``l``, ``r``, ``c``, ``-`` for none).

    Rows shorter than the header are padded with empty cells; longer ones are an error (a lost column
    would shift every value after it).
    """
    rules = align if align is not None else "-" * len(headers)
    if len(rules) != len(headers) or set(rules) - set(_RULES):
        raise ValueError(f"align needs one of {''.join(_RULES)} per column, got {rules!r} for {len(headers)}")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "| " + " | ".join(_RULES[a] for a in rules) + " |"]
    for row in rows:
        if len(row) > len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns: {list(row)!r}")
        cells = [cell(v, digits) for v in row] + [""] * (len(headers) - len(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""Tables and plots of a grid: results.csv, results.md in the papers' layout, and PNG figures.

The Markdown table follows the LSA/OWL/DLP papers: one table per (model, pattern, metric), rows are
methods (``pruner + scorer (allocator)``), columns are sparsities.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lsa_framework.bench.runner import ResultStore

HEADLINE = ("perplexity", "zeroshot.mean", "sparsity")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def csv_text(records: list[dict[str, Any]]) -> str:
    metric_names = sorted({k for r in records for k in r["metrics"] if k.count(".") == 0 or k.startswith("zeroshot.")})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "pattern", "pruner", "scorer", "allocator", "sparsity", *metric_names, "reused_from"])
    for r in records:
        writer.writerow(
            [
                r["model"],
                r["pattern"],
                r["pruner"],
                r["scorer"],
                r["allocator"],
                r["sparsity"],
                *[r["metrics"].get(m, "") for m in metric_names],
                r.get("reused_from") or "",
            ]
        )
    return out.getvalue()


def _format(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1e4:
        return f"{value:.2e}"
    return f"{value:.2f}"


def markdown_tables(records: list[dict[str, Any]]) -> str:
    """One paper-style table per (model, pattern, metric); the best value of each column in bold."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["pattern"])].append(r)
    lines: list[str] = []
    for (model, pattern), rows in groups.items():
        sparsities = sorted({r["sparsity"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for metric in HEADLINE[:2]:
            if not any(metric in r["metrics"] for r in rows):
                continue
            lower_is_better = metric == "perplexity"
            cell = {(r["method"], r["sparsity"]): r["metrics"].get(metric) for r in rows}
            label = "perplexity (lower is better)" if lower_is_better else "zero-shot mean accuracy"
            lines += [f"### {model}, {pattern}: {label}", ""]
            lines.append("| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |")
            lines.append("| --- |" + " ---: |" * len(sparsities))
            best = {}
            for s in sparsities:
                column = [v for (m, sp), v in cell.items() if sp == s and v is not None and math.isfinite(v)]
                if column:
                    best[s] = min(column) if lower_is_better else max(column)
            for method in methods:
                values = []
                for s in sparsities:
                    v = cell.get((method, s))
                    text = _format(v)
                    values.append(f"**{text}**" if v is not None and best.get(s) == v else text)
                lines.append(f"| {method} | " + " | ".join(values) + " |")
            lines.append("")
    return "\n".join(lines)


def write_tables(store: ResultStore, folder: Path) -> None:
    from lsa_framework.bench.plots import write_plots

    records = list(store.records.values())
    if not records:
        return
    _atomic_write(folder / "results.csv", csv_text(records))
    _atomic_write(folder / "results.md", "# lsaf bench results\n\n" + markdown_tables(records))
    write_plots(records, folder)

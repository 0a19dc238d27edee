"""Tables and plots of a grid: results.csv, results.md in the papers' layout, and PNG figures.

The Markdown table follows the LSA/OWL/DLP papers: one table per (model, pattern, metric), rows are
methods (``pruner + scorer (allocator)``), columns are sparsities.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from lsa_framework.storage.atomic import write_text

HEADLINE = ("perplexity", "zeroshot.mean", "sparsity")
#: metric -> (table title, which direction is better; None: not a quality metric, nothing in bold)
LABELS = {
    "perplexity": ("perplexity (lower is better)", "lower"),
    "zeroshot.mean": ("zero-shot mean accuracy", "higher"),
    "sparsity": ("realised sparsity", None),
}


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


def _format(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if value >= 1e4:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def markdown_tables(records: list[dict[str, Any]]) -> str:
    """One paper-style table per (model, pattern, metric); the best value of each column in bold."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["pattern"])].append(r)
    lines: list[str] = []
    for (model, pattern), rows in groups.items():
        sparsities = sorted({r["sparsity"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for metric in HEADLINE:
            if not any(metric in r["metrics"] for r in rows):
                continue
            label, better = LABELS[metric]
            lower_is_better = better == "lower"
            cell = {(r["method"], r["sparsity"]): r["metrics"].get(metric) for r in rows}
            lines += [f"### {model}, {pattern}: {label}", ""]
            lines.append("| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |")
            lines.append("| --- |" + " ---: |" * len(sparsities))
            best = {}
            for s in sparsities:
                column = [v for (m, sp), v in cell.items() if sp == s and v is not None and math.isfinite(v)]
                if column and better is not None:
                    best[s] = min(column) if lower_is_better else max(column)
            for method in methods:
                values = []
                for s in sparsities:
                    v = cell.get((method, s))
                    text = _format(v, 4 if better is None else 2)
                    values.append(f"**{text}**" if v is not None and best.get(s) == v else text)
                lines.append(f"| {method} | " + " | ".join(values) + " |")
            lines.append("")
    return "\n".join(lines)


def failures_markdown(failed: list[dict[str, Any]]) -> str:
    """The cells that failed, each with its error sentence (a rerun retries them)."""
    if not failed:
        return ""
    lines = ["### failed cells", "", "| cell | error |", "| --- | --- |"]
    lines += [f"| {f['id']} | {' '.join(str(f['error']).split()).replace('|', '/')} |" for f in failed]
    return "\n".join([*lines, ""])


def write_tables(records: list[dict[str, Any]], failed: list[dict[str, Any]], folder: Path) -> None:
    """results.csv, results.md (the paper-style tables, then the failed cells) and the plots."""
    from lsa_framework.bench.plots import write_plots

    if not records and not failed:
        return
    write_text(folder / "results.csv", csv_text(records))
    body = markdown_tables(records) + ("\n" + failures_markdown(failed) if failed else "")
    write_text(folder / "results.md", "# lsaf bench results\n\n" + body)
    if records:
        write_plots(records, folder)

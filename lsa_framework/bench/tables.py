"""Tables and plots of a grid: results.csv, results.md in the papers' layout, and PNG figures.

The Markdown table follows the LSA/OWL/DLP papers: one table per (model, pattern, metric), rows are
methods (``pruner + scorer (allocator)``), columns are sparsities.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from lsa_framework.report.tables import cell, markdown_table
from lsa_framework.storage.atomic import write_text


def _headlines(records: list[dict[str, Any]]) -> list[tuple[str, bool | None]]:
    """(metric, lower is better) of every evaluator the cells ran, as the evaluators declared them
    (cells of lsaf versions that did not record it: the registered evaluators' declarations)."""
    found: dict[str, bool | None] = {}
    for r in records:
        for declared in (r.get("headlines") or {}).values():
            found.setdefault(declared["metric"], declared["lower_is_better"])
    if not found:
        from lsa_framework import registry

        for entry in registry.collect("evaluators").values():
            metric = getattr(entry.cls, "headline", entry.name)
            if any(metric in r["metrics"] for r in records):
                found.setdefault(metric, getattr(entry.cls, "lower_is_better", None))
    return list(found.items())


def _summary(record: dict[str, Any]) -> list[str]:
    patterns = record.get("summary") or [m for m, _ in _headlines([record])]
    return [k for k in record["metrics"] if any(fnmatch.fnmatchcase(k, p) for p in patterns)]


def csv_text(records: list[dict[str, Any]]) -> str:
    metric_names = sorted({k for r in records for k in _summary(r)})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "pattern", "pruner", "scorer", "allocator", "sparsity", *metric_names, "reused_from"])
    for r in records:
        identity = [r["model"], r["pattern"], r["pruner"], r["scorer"], r["allocator"], r["sparsity"]]
        writer.writerow([*identity, *[r["metrics"].get(m, "") for m in metric_names], r.get("reused_from") or ""])
    return out.getvalue()


def _title(metric: str, lower_is_better: bool | None) -> str:
    if lower_is_better is None:
        return metric
    return f"{metric} ({'lower' if lower_is_better else 'higher'} is better)"


def markdown_tables(records: list[dict[str, Any]]) -> str:
    """One paper-style table per (model, pattern, headline metric); the best value of each column in bold."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["pattern"])].append(r)
    lines: list[str] = []
    for (model, pattern), rows in groups.items():
        sparsities = sorted({r["sparsity"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for metric, lower_is_better in _headlines(rows):
            if not any(metric in r["metrics"] for r in rows):
                continue
            value = {(r["method"], r["sparsity"]): r["metrics"].get(metric) for r in rows}
            best = {}
            for s in sparsities:
                column = [v for (m, sp), v in value.items() if sp == s and v is not None and math.isfinite(v)]
                if column and lower_is_better is not None:
                    best[s] = min(column) if lower_is_better else max(column)
            digits = 4 if lower_is_better is None else 2
            table = []
            for method in methods:
                texts = []
                for s in sparsities:
                    v = value.get((method, s))
                    text = cell(v, digits)
                    texts.append(f"**{text}**" if v is not None and best.get(s) == v else text)
                table.append([method, *texts])
            headers = ["method", *[f"{s:g}" for s in sparsities]]
            lines += [f"### {model}, {pattern}: {_title(metric, lower_is_better)}", ""]
            lines += [markdown_table(headers, table, "l" + "r" * len(sparsities)), ""]
    return "\n".join(lines)


def failures_markdown(failed: list[dict[str, Any]]) -> str:
    """The cells that failed, each with its error sentence (a rerun retries them)."""
    if not failed:
        return ""
    rows = [[f["id"], " ".join(str(f["error"]).split())] for f in failed]
    return "\n".join(["### failed cells", "", markdown_table(["cell", "error"], rows, "ll"), ""])


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

"""Tables and plots of a grid: results.csv, results.md in the papers' layout, and PNG figures.

The Markdown table follows the LSA/OWL/DLP papers: one table per (model, pattern, metric), rows are
methods (``pruner + scorer (allocator)``), columns are sparsities. With several calibration seeds
(the grid's ``seeds``) a cell is mean ± sample std over the seeds, and for every ``baseline`` scorer a
second table gives each other scorer's paired difference to it (same pruner, allocator, sparsity and
seed), flagged "≈" when it is within seed noise (a paired t-test at 5%, :mod:`lsa_framework.bench.seeds`).
Perplexities are compared as ratios (differences of their logarithms), shown in percent.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from lsa_framework.bench.seeds import PairedDifference, paired_differences, summarise
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
    writer.writerow(
        ["model", "pattern", "pruner", "scorer", "allocator", "sparsity", "seed", *metric_names, "reused_from"]
    )
    for r in records:
        identity = [
            r["model"],
            r["pattern"],
            r["pruner"],
            r["scorer"],
            r["allocator"],
            r["sparsity"],
            r.get("seed", ""),
        ]
        writer.writerow([*identity, *[r["metrics"].get(m, "") for m in metric_names], r.get("reused_from") or ""])
    return out.getvalue()


def _title(metric: str, lower_is_better: bool | None) -> str:
    if lower_is_better is None:
        return metric
    return f"{metric} ({'lower' if lower_is_better else 'higher'} is better)"


def _per_seed(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, float], dict[Any, float]]:
    """(method, sparsity) → {seed: value} of ``metric`` (finite values only)."""
    found: dict[tuple[str, float], dict[Any, float]] = defaultdict(dict)
    for r in rows:
        value = r["metrics"].get(metric)
        if value is not None and math.isfinite(value):
            found[(r["method"], r["sparsity"])][r.get("seed")] = float(value)
    return found


def markdown_tables(records: list[dict[str, Any]], baselines: list[str] | None = None) -> str:
    """One paper-style table per (model, pattern, headline metric), the best value (mean) of each column in
    bold; with several seeds, mean ± std, and one table of paired differences per baseline scorer."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["pattern"])].append(r)
    lines: list[str] = []
    for (model, pattern), rows in groups.items():
        sparsities = sorted({r["sparsity"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        seeds = sorted({r.get("seed") for r in rows}, key=str)
        for metric, lower_is_better in _headlines(rows):
            if not any(metric in r["metrics"] for r in rows):
                continue
            per_seed = _per_seed(rows, metric)
            summary = {key: summarise({"m": by_seed})["m"] for key, by_seed in per_seed.items() if by_seed}
            best = {}
            for s in sparsities:
                column = [v.mean for (m, sp), v in summary.items() if sp == s]
                if column and lower_is_better is not None:
                    best[s] = min(column) if lower_is_better else max(column)
            digits = 4 if lower_is_better is None else 2
            table = []
            for method in methods:
                texts = []
                for s in sparsities:
                    found = summary.get((method, s))
                    if found is None:
                        text = cell(None)
                    elif found.std is None:
                        text = cell(found.mean, digits)
                    else:
                        text = f"{cell(found.mean, digits)} ± {cell(found.std, digits)}"
                    texts.append(f"**{text}**" if found is not None and best.get(s) == found.mean else text)
                table.append([method, *texts])
            title = f"### {model}, {pattern}: {_title(metric, lower_is_better)}"
            if len(seeds) > 1:
                title += f", mean ± std over seeds {', '.join(str(s) for s in seeds)}"
            headers = ["method", *[f"{s:g}" for s in sparsities]]
            lines += [title, "", markdown_table(headers, table, "l" + "r" * len(sparsities)), ""]
            if lower_is_better is not None:
                for baseline in baselines or []:
                    lines += _paired_table(model, pattern, metric, lower_is_better, rows, baseline, sparsities)
    return "\n".join(lines)


def paired_rows(
    rows: list[dict[str, Any]], metric: str, baseline: str, sparsity: float, ratio: bool = False
) -> dict[str, PairedDifference]:
    """Every method's paired difference to ``baseline``'s cell with the same pruner and allocator at
    ``sparsity``, seed by seed; with ``ratio`` (a lower-is-better metric such as perplexity) as the
    difference of logs, since such metrics vary by factors. Keyed by method."""
    logs = ratio
    by: dict[tuple[str, str], dict[str, dict[Any, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        value = r["metrics"].get(metric)
        if r["sparsity"] != sparsity or value is None or not math.isfinite(value) or (logs and value <= 0):
            continue
        by[(r["pruner"], r["allocator"])][r["scorer"]][r.get("seed")] = math.log(value) if logs else float(value)
    found: dict[str, PairedDifference] = {}
    for (pruner, allocator), results in by.items():
        if baseline not in results:
            continue
        for scorer, diff in paired_differences(results, baseline).items():
            found[f"{pruner} + {scorer} ({allocator})"] = diff
    return found


def _paired_text(diff: PairedDifference, ratio: bool) -> str:
    if ratio:
        text = f"{100 * math.expm1(diff.mean):+.1f}%"
        noise = None if diff.threshold is None else 100 * math.expm1(diff.threshold)
        text += "" if noise is None else f" (±{noise:.1f}%)"
    else:
        text = f"{diff.mean:+.4f}" + ("" if diff.threshold is None else f" (±{diff.threshold:.4f})")
    return text + (" ≈" if diff.within_noise else "")


def _paired_table(
    model: str,
    pattern: str,
    metric: str,
    lower_is_better: bool,
    rows: list[dict[str, Any]],
    baseline: str,
    sparsities: list[float],
) -> list[str]:
    ratio = lower_is_better
    diffs = {s: paired_rows(rows, metric, baseline, s, ratio) for s in sparsities}
    methods = list(dict.fromkeys(m for s in sparsities for m in diffs[s]))
    if not methods:
        return []
    what = "ratio to" if ratio else "difference to"
    lines = [
        f"#### {model}, {pattern}: {_title(metric, lower_is_better)}, paired {what} {baseline}"
        " (same pruner, allocator and seed)",
        "",
        "Mean over seeds, with the 95% half-width of a paired t-test; ≈: within seed noise.",
        "",
        "| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |",
        "| --- |" + " ---: |" * len(sparsities),
    ]
    for method in methods:
        cells = [_paired_text(diffs[s][method], ratio) if method in diffs[s] else "–" for s in sparsities]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def failures_markdown(failed: list[dict[str, Any]]) -> str:
    """The cells that failed, each with its error sentence (a rerun retries them)."""
    if not failed:
        return ""
    rows = [[f["id"], " ".join(str(f["error"]).split())] for f in failed]
    return "\n".join(["### failed cells", "", markdown_table(["cell", "error"], rows, "ll"), ""])


def write_tables(
    records: list[dict[str, Any]], failed: list[dict[str, Any]], folder: Path, baselines: list[str] | None = None
) -> None:
    """results.csv, results.md (the paper-style tables, then the failed cells) and the plots."""
    from lsa_framework.bench.plots import write_plots

    if not records and not failed:
        return
    write_text(folder / "results.csv", csv_text(records))
    body = markdown_tables(records, baselines) + ("\n" + failures_markdown(failed) if failed else "")
    write_text(folder / "results.md", "# lsaf bench results\n\n" + body)
    if records:
        write_plots(records, folder)

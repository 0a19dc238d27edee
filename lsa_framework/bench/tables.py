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
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from lsa_framework.bench.seeds import PairedDifference, paired_differences, summarise
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
    writer.writerow(
        ["model", "pattern", "pruner", "scorer", "allocator", "sparsity", "seed", *metric_names, "reused_from"]
    )
    for r in records:
        writer.writerow(
            [
                r["model"],
                r["pattern"],
                r["pruner"],
                r["scorer"],
                r["allocator"],
                r["sparsity"],
                r.get("seed", ""),
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


def _per_seed(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, float], dict[Any, float]]:
    """(method, sparsity) → {seed: value} of ``metric`` (finite values only)."""
    found: dict[tuple[str, float], dict[Any, float]] = defaultdict(dict)
    for r in rows:
        value = r["metrics"].get(metric)
        if value is not None and math.isfinite(value):
            found[(r["method"], r["sparsity"])][r.get("seed")] = float(value)
    return found


def markdown_tables(records: list[dict[str, Any]], baselines: list[str] | None = None) -> str:
    """One paper-style table per (model, pattern, metric), the best value (mean) of each column in bold;
    with several seeds, mean ± std, and one table of paired differences per baseline scorer."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["pattern"])].append(r)
    lines: list[str] = []
    for (model, pattern), rows in groups.items():
        sparsities = sorted({r["sparsity"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        seeds = sorted({r.get("seed") for r in rows}, key=str)
        for metric in HEADLINE:
            if not any(metric in r["metrics"] for r in rows):
                continue
            label, better = LABELS[metric]
            lower_is_better = better == "lower"
            per_seed = _per_seed(rows, metric)
            summary = {key: summarise({"m": by_seed})["m"] for key, by_seed in per_seed.items() if by_seed}
            title = f"### {model}, {pattern}: {label}"
            if len(seeds) > 1:
                title += f", mean ± std over seeds {', '.join(str(s) for s in seeds)}"
            lines += [title, ""]
            lines.append("| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |")
            lines.append("| --- |" + " ---: |" * len(sparsities))
            best = {}
            for s in sparsities:
                column = [v.mean for (m, sp), v in summary.items() if sp == s]
                if column and better is not None:
                    best[s] = min(column) if lower_is_better else max(column)
            for method in methods:
                values = []
                for s in sparsities:
                    found = summary.get((method, s))
                    digits = 4 if better is None else 2
                    if found is None:
                        text = _format(None)
                    elif found.std is None:
                        text = _format(found.mean, digits)
                    else:
                        text = f"{_format(found.mean, digits)} ± {_format(found.std, digits)}"
                    values.append(f"**{text}**" if found is not None and best.get(s) == found.mean else text)
                lines.append(f"| {method} | " + " | ".join(values) + " |")
            lines.append("")
            if better is not None:
                for baseline in baselines or []:
                    lines += _paired_table(model, pattern, label, metric, rows, baseline, sparsities)
    return "\n".join(lines)


def paired_rows(rows: list[dict[str, Any]], metric: str, baseline: str, sparsity: float) -> dict[str, PairedDifference]:
    """Every method's paired difference to ``baseline``'s cell with the same pruner and allocator at
    ``sparsity``, seed by seed; perplexity as the difference of logs. Keyed by method."""
    logs = metric == "perplexity"
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


def _paired_text(diff: PairedDifference, metric: str) -> str:
    if metric == "perplexity":
        text = f"{100 * math.expm1(diff.mean):+.1f}%"
        noise = None if diff.threshold is None else 100 * math.expm1(diff.threshold)
        text += "" if noise is None else f" (±{noise:.1f}%)"
    else:
        text = f"{diff.mean:+.4f}" + ("" if diff.threshold is None else f" (±{diff.threshold:.4f})")
    return text + (" ≈" if diff.within_noise else "")


def _paired_table(
    model: str,
    pattern: str,
    label: str,
    metric: str,
    rows: list[dict[str, Any]],
    baseline: str,
    sparsities: list[float],
) -> list[str]:
    diffs = {s: paired_rows(rows, metric, baseline, s) for s in sparsities}
    methods = list(dict.fromkeys(m for s in sparsities for m in diffs[s]))
    if not methods:
        return []
    what = "ratio to" if metric == "perplexity" else "difference to"
    lines = [
        f"#### {model}, {pattern}: {label}, paired {what} {baseline} (same pruner, allocator and seed)",
        "",
        "Mean over seeds, with the 95% half-width of a paired t-test; ≈: within seed noise.",
        "",
        "| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |",
        "| --- |" + " ---: |" * len(sparsities),
    ]
    for method in methods:
        cells = [_paired_text(diffs[s][method], metric) if method in diffs[s] else "–" for s in sparsities]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def failures_markdown(failed: list[dict[str, Any]]) -> str:
    """The cells that failed, each with its error sentence (a rerun retries them)."""
    if not failed:
        return ""
    lines = ["### failed cells", "", "| cell | error |", "| --- | --- |"]
    lines += [f"| {f['id']} | {' '.join(str(f['error']).split()).replace('|', '/')} |" for f in failed]
    return "\n".join([*lines, ""])


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

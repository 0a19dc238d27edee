"""Figures of a grid: perplexity vs sparsity (log scale), sparsity profiles, zero-shot vs sparsity."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lsa_framework.report.plots import plot_sparsity_profile
from lsa_framework.storage.atomic import write_file


def _metric_vs_sparsity(records: list[dict[str, Any]], metric: str, path: Path, log: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r["pattern"] == "unstructured" and metric in r["metrics"]:
            series[f"{r['model']}: {r['method']}"].append((r["sparsity"], r["metrics"][metric]))
    if not any(len(points) > 1 for points in series.values()):
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("sparsity")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def write_plots(records: list[dict[str, Any]], folder: Path) -> None:
    from lsa_framework.bench.tables import _headlines

    for metric, lower_is_better in _headlines(records):
        if lower_is_better is None:
            continue  # descriptive (sparsity): the x axis already says it
        values = [r["metrics"][metric] for r in records if metric in r["metrics"] and r["metrics"][metric] > 0]
        spans_decades = bool(values) and max(values) > 10 * min(values)  # perplexity at 70% vs 50%
        name = metric.replace(".", "_")
        _metric_vs_sparsity(records, metric, folder / f"{name}_vs_sparsity.png", log=spans_decades)
    # Sparsity profile across depth, one line per scorer × allocator, at the highest unstructured sparsity.
    unstructured = [r for r in records if r["pattern"] == "unstructured"]
    if not unstructured:
        return
    top = max(r["sparsity"] for r in unstructured)
    model = unstructured[0]["model"]
    runs: dict[str, list[Any]] = {}
    for r in unstructured:
        label = f"{r['scorer']} ({r['allocator']})"
        if r["sparsity"] == top and r["model"] == model and label not in runs:
            runs[label] = [SimpleNamespace(**u) for u in r["units"]]
    plot_sparsity_profile(runs, folder / "sparsity_profiles.png")

"""Figures of a grid: a metric against sparsity (perplexity on a log scale, zero-shot accuracy), and the
sparsity profiles across depth.

Every figure is faceted by pruner (rows) and granularity (columns), and each scorer has one colour,
the same in every facet and every figure of the grid (the grid's scorers in order of appearance). With
several seeds a point is the mean and its error bar the sample standard deviation over the seeds. A
grid with one sparsity shows the scorers side by side at that sparsity instead of lines.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from lsa_framework.bench.seeds import summarise
from lsa_framework.storage.atomic import write_file

#: A qualitative palette (matplotlib's tab10 then tab20's light shades): distinct for up to 20 scorers.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip


def scorer_colours(records: list[dict[str, Any]]) -> dict[str, str]:
    """One colour per scorer, by order of first appearance (so every figure of a grid agrees)."""
    scorers = list(dict.fromkeys(r["scorer"] for r in records))
    return {scorer: PALETTE[i % len(PALETTE)] for i, scorer in enumerate(scorers)}


def _facets(records: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    return list(dict.fromkeys(r["pruner"] for r in records)), list(dict.fromkeys(r["allocator"] for r in records))


def _figure(rows: int, cols: int) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.2, 3.0 * rows + 0.6), squeeze=False, sharey=True)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0.0, 0.0, 0.86, 1.0))  # the legend sits to the right of the facets
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _metric_vs_sparsity(records: list[dict[str, Any]], metric: str, path: Path, log: bool) -> None:
    rows = [r for r in records if r["pattern"] == "unstructured" and metric in r["metrics"]]
    rows = [r for r in rows if r["metrics"][metric] is not None and math.isfinite(r["metrics"][metric])]
    if not rows:
        return
    colours = scorer_colours(records)
    pruners, allocators = _facets(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    sparsities = sorted({r["sparsity"] for r in rows})
    fig, axes = _figure(len(pruners), len(allocators))
    markers = "osD^v<>"
    for i, pruner in enumerate(pruners):
        for j, allocator in enumerate(allocators):
            ax = axes[i][j]
            facet = [r for r in rows if r["pruner"] == pruner and r["allocator"] == allocator]
            scorers = [s for s in colours if any(r["scorer"] == s for r in facet)]  # the grid's order
            for model, scorer in ((m, s) for m in models for s in scorers):
                values: dict[float, dict[Any, float]] = defaultdict(dict)
                for r in facet:
                    if r["model"] == model and r["scorer"] == scorer:
                        values[r["sparsity"]][r.get("seed")] = r["metrics"][metric]
                if not values:
                    continue
                stats = {s: summarise({"m": v})["m"] for s, v in sorted(values.items())}
                xs = list(stats) if len(sparsities) > 1 else [scorers.index(scorer)] * len(stats)
                label = scorer if len(models) == 1 else f"{scorer} ({model})"
                ax.errorbar(
                    xs,
                    [v.mean for v in stats.values()],
                    yerr=[v.std or 0.0 for v in stats.values()],
                    color=colours[scorer],
                    marker=markers[models.index(model) % len(markers)],
                    markersize=4,
                    capsize=3,
                    linestyle="-" if len(sparsities) > 1 else "none",
                    label=label,
                )
            if len(sparsities) == 1:
                ax.set_xticks(range(len(scorers)), scorers, rotation=45, fontsize=7)
                ax.set_xlabel(f"scorer, at sparsity {sparsities[0]:g}")
            else:
                ax.set_xlabel("sparsity")
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{pruner}, {allocator}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if j == 0:
                ax.set_ylabel(metric)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=7, ncol=1)
    _save(fig, path)


def _profiles(records: list[dict[str, Any]], path: Path) -> None:
    """Parameter-weighted sparsity per decoder layer, one line per scorer, faceted by pruner and
    granularity, at the highest unstructured sparsity of the first model (first seed)."""
    unstructured = [r for r in records if r["pattern"] == "unstructured" and r.get("units")]
    if not unstructured:
        return
    top = max(r["sparsity"] for r in unstructured)
    model = unstructured[0]["model"]
    chosen = [r for r in unstructured if r["sparsity"] == top and r["model"] == model]
    first_seed = min((r.get("seed") for r in chosen), key=lambda s: (s is None, s if s is not None else 0))
    chosen = [r for r in chosen if r.get("seed") == first_seed]
    colours = scorer_colours(records)
    pruners, allocators = _facets(chosen)
    fig, axes = _figure(len(pruners), len(allocators))
    for i, pruner in enumerate(pruners):
        for j, allocator in enumerate(allocators):
            ax = axes[i][j]
            seen: set[str] = set()
            for r in chosen:
                if r["pruner"] != pruner or r["allocator"] != allocator or r["scorer"] in seen:
                    continue
                seen.add(r["scorer"])
                by_layer: dict[int, list[dict[str, Any]]] = defaultdict(list)
                for u in r["units"]:
                    by_layer[u["layer"]].append(u)
                layers = sorted(by_layer)
                values = [
                    sum(u["sparsity"] * u["numel"] for u in by_layer[k]) / sum(u["numel"] for u in by_layer[k])
                    for k in layers
                ]
                ax.plot(layers, values, marker="o", markersize=2, color=colours[r["scorer"]], label=r["scorer"])
            ax.set_title(f"{pruner}, {allocator} ({top:g})", fontsize=9)
            ax.set_xlabel("decoder layer")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("sparsity")
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=7)
    _save(fig, path)


def write_plots(records: list[dict[str, Any]], folder: Path) -> None:
    from lsa_framework.bench.tables import _headlines

    for metric, lower_is_better in _headlines(records):
        if lower_is_better is None:
            continue  # descriptive (sparsity): the x axis already says it
        values = [r["metrics"][metric] for r in records if metric in r["metrics"] and r["metrics"][metric] > 0]
        spans_decades = bool(values) and max(values) > 10 * min(values)  # perplexity at 70% vs 50%
        name = metric.replace(".", "_")
        _metric_vs_sparsity(records, metric, folder / f"{name}_vs_sparsity.png", log=spans_decades)
    _profiles(records, folder / "sparsity_profiles.png")

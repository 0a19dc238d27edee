"""report.md: the run's settings, metrics (dense → pruned), stage times, what a searching scorer
reported about its search, and the per-unit allocation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from lsa_framework.report.tables import markdown_table

if TYPE_CHECKING:
    from lsa_framework.result import RunResult


def _title(result: RunResult) -> str:
    c = result.config
    if result.kind == "run":
        return f"# lsaf run: {c.scorer} + {c.allocator} + {c.pruner} at {c.target_sparsity:g} ({c.pattern})"
    return f"# lsaf {result.kind}: {c.model}"


def _search_rows(record: Mapping[str, Any], prefix: str = "") -> Iterator[list[Any]]:
    """The search record's scalars, nested mappings as ``outer.inner``; lists (a history) stay in run.json."""
    for key, value in record.items():
        if isinstance(value, Mapping):
            yield from _search_rows(value, f"{prefix}{key}.")
        elif isinstance(value, str | int | float | bool) or value is None:
            yield [f"{prefix}{key}", value]


def render_markdown(result: RunResult) -> str:
    c = result.config
    lines = [_title(result), ""]
    if result.kind == "run":
        lines += [
            f"Model `{c.model}` ({c.dtype}), calibration `{c.calibration}` {c.nsamples}×{c.seqlen}, seed {c.seed}."
        ]
    else:
        lines += [f"Model `{c.model}` ({c.dtype})."]
    if result.model_sha256:
        lines += ["", f"Weights sha256 `{result.model_sha256[:16]}` (read from `{result.model_source}`)."]
    metrics = [[k, result.dense_metrics.get(k), v] for k, v in result.summary_values().items()]
    lines += ["", markdown_table(["metric", "dense", "value"], metrics, "lrr", digits=4)]
    stages = [
        [k, f"{v:.1f}", f"{result.cpu_s.get(k, 0):.1f}", f"{result.peak_rss_mb.get(k, 0):.0f}"]
        for k, v in result.timings.items()
    ]
    lines += ["", markdown_table(["stage", "seconds", "CPU seconds", "peak RSS (MB)"], stages, "lrrr")]
    search = result.allocation.get("search")
    if isinstance(search, Mapping) and search:
        lines += ["", "Search (`allocation.search` in run.json):", ""]
        lines += [markdown_table(["", "value"], list(_search_rows(search)), "lr", digits=5)]
    if result.units:
        units = [[u.name, u.numel, f"{u.score:.6g}", u.sparsity, u.realised] for u in result.units]
        headers = ["unit", "parameters", "score", "allocated", "realised"]
        lines += ["", markdown_table(headers, units, "lrrrr", digits=4)]
    if result.allocation.get("note"):
        lines += ["", f"Note: {result.allocation['note']}."]
    if result.units:
        lines += ["", "![sparsity profile](sparsity_profile.png)"]
    return "\n".join([*lines, ""])

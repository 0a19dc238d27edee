"""report.md: the run's settings, metrics (dense → pruned), stage times and per-unit allocation."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lsa_framework.result import RunResult


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics worth a table row: everything but the per-layer and per-linear breakdowns."""
    return {k: v for k, v in metrics.items() if k.count(".") == 0 or k.startswith("zeroshot.")}


def _title(result: RunResult) -> str:
    c = result.config
    if result.kind == "run":
        return f"# lsaf run: {c.scorer} + {c.allocator} + {c.pruner} at {c.target_sparsity:g} ({c.pattern})"
    return f"# lsaf {result.kind}: {c.model}"


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
    lines += ["", "| metric | dense | value |", "| --- | --- | --- |"]
    for key, value in headline_metrics(result.metrics).items():
        dense = result.dense_metrics.get(key)
        lines.append(f"| {key} | {'' if dense is None else f'{dense:.4f}'} | {value:.4f} |")
    lines += ["", "| stage | seconds | peak RSS (MB) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v:.1f} | {result.peak_rss_mb.get(k, 0):.0f} |" for k, v in result.timings.items()]
    if result.units:
        lines += ["", "| unit | parameters | score | allocated | realised |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {u.name} | {u.numel} | {u.score:.6g} | {u.sparsity:.4f} | "
            f"{'' if u.realised is None else f'{u.realised:.4f}'} |"
            for u in result.units
        ]
    if result.allocation.get("note"):
        lines += ["", f"Note: {result.allocation['note']}."]
    if result.units:
        lines += ["", "![sparsity profile](sparsity_profile.png)"]
    return "\n".join([*lines, ""])

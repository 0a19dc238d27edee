"""report.md: the run's settings, metrics, stage times and per-unit allocation as Markdown tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lsa_framework.engine.pipeline import RunResult


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics worth a table row: everything but the per-layer and per-linear breakdowns."""
    return {k: v for k, v in metrics.items() if k.count(".") == 0 or k.startswith("zeroshot.")}


def render_markdown(result: RunResult) -> str:
    c = result.config
    lines = [
        f"# lsaf run: {c.scorer} + {c.allocator} + {c.pruner} at {c.target_sparsity:g} ({c.pattern})",
        "",
        f"Model `{c.model}` ({c.dtype}), calibration `{c.calibration}` {c.nsamples}×{c.seqlen}, seed {c.seed}.",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in headline_metrics(result.metrics).items()]
    lines += ["", "| stage | seconds | peak RSS (MB) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v:.1f} | {result.peak_rss_mb.get(k, 0):.0f} |" for k, v in result.timings.items()]
    lines += ["", "| unit | parameters | score | allocated | realised |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {u.name} | {u.numel} | {u.score:.6g} | {u.sparsity:.4f} | "
        f"{'' if u.realised is None else f'{u.realised:.4f}'} |"
        for u in result.units
    ]
    if result.allocation.get("note"):
        lines += ["", f"Note: {result.allocation['note']}."]
    lines += ["", "![sparsity profile](sparsity_profile.png)", ""]
    return "\n".join(lines)

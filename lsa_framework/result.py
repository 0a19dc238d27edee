"""What a run produced: the object ``prune()`` returns and run.json serialises.

It lives below the engine and the report (both import it, it imports neither), so no import cycles.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class UnitRecord:
    name: str
    layer: int
    numel: int
    score: float
    sparsity: float  # allocated
    realised: float | None = None  # counted from the weights after pruning


@dataclass
class RunResult:
    """What a run (or an evaluation) produced; ``to_json`` is what run.json holds."""

    config: Any  # the RunConfig
    kind: str = "run"  # "run", "eval", "apply", "recover"
    units: list[UnitRecord] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    #: the same evaluators on the model before pruning (users compare "dense → pruned")
    dense_metrics: dict[str, float] = field(default_factory=dict)
    #: evaluator name -> (headline metric, lower is better); how tables and reports present metrics
    headlines: dict[str, tuple[str, bool | None]] = field(default_factory=dict)
    #: glob patterns of the metrics worth a row in reports (the evaluators' declared ``summary``)
    summary: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per stage (all threads)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    mask_hashes: dict[str, str] = field(default_factory=dict)
    allocation: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    model_source: str = ""
    model_sha256: str = ""
    calibration: dict[str, int] = field(default_factory=dict)  # the windows actually used
    output: Path | None = None

    def summary_values(self, metrics: dict[str, float] | None = None) -> dict[str, float]:
        """The metrics worth a row in a report (``summary`` patterns; all metrics when none are declared)."""
        import fnmatch

        source = self.metrics if metrics is None else metrics
        if not self.summary:
            return dict(source)
        return {k: v for k, v in source.items() if any(fnmatch.fnmatchcase(k, p) for p in self.summary)}

    def headline_values(self, metrics: dict[str, float] | None = None) -> dict[str, float]:
        """The headline metric of every evaluator, in --eval order."""
        source = self.metrics if metrics is None else metrics
        return {metric: source[metric] for metric, _ in self.headlines.values() if metric in source}

    def to_json(self) -> dict[str, Any]:
        import torch
        import transformers

        from lsa_framework import __version__

        return {
            "kind": self.kind,
            "config": self.config.model_dump(mode="json"),
            "versions": {
                "lsa_framework": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
            "seed": self.config.seed,
            "model_source": self.model_source,
            "model_sha256": self.model_sha256,
            "calibration": self.calibration,
            "allocation": self.allocation,
            "units": [vars(u) for u in self.units],
            "metrics": self.metrics,
            "dense_metrics": self.dense_metrics,
            "headlines": {k: {"metric": m, "lower_is_better": b} for k, (m, b) in self.headlines.items()},
            "summary": self.summary,
            "timings_s": self.timings,
            "cpu_s": self.cpu_s,
            "peak_rss_mb": self.peak_rss_mb,
            "mask_sha256": self.mask_hashes,
            "extra": self.extra,
        }

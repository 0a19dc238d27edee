"""The DLP scorer: the median of each unit's Wanda metric.

    lsaf run --scorer dlp [--scorer-opt alpha=0.15 --scorer-opt reduce=median|mean]

A unit's score is |median| of the Wanda scores |W_kj|·‖X_j‖₂ of all its linears together (DLP, Chen
et al. 2025, as the paper and LSA's re-implementation do; ``reduce=mean`` reproduces the released
DLP code). A larger score means less important, so more sparsity; the band is ±α around the target.
The median is ``torch.median`` (lower middle value), as in the references.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field

from lsa_framework.hookspecs import hookimpl
from lsa_framework.scorers.functions import dlp_score, wanda_metric
from lsa_framework.types import LinearStats, PluginOptions, Scores, Unit


class DlpOptions(PluginOptions):
    alpha: float = Field(default=0.15, ge=0.0, description="half-width α of the sparsity band")
    reduce: Literal["median", "mean"] = Field(default="median", description="statistic of the unit's Wanda metric")


class DlpScorer:
    name: ClassVar[str] = "dlp"
    Options: ClassVar[type[PluginOptions]] = DlpOptions
    needs: ClassVar[frozenset[str]] = frozenset({"input_sq_norm"})

    def __init__(self, options: Any = None) -> None:
        self.options: DlpOptions = options if options is not None else DlpOptions()

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> float:
        metrics = [wanda_metric(info.weight, stats[info.name].require("input_sq_norm")) for info in unit.linears]
        return dlp_score(metrics, self.options.reduce)

    def finish(self, values: Mapping[str, float], target: float, granularity: str) -> Scores:
        return Scores(values=dict(values), higher_is_important=False, spread=self.options.alpha)


@hookimpl
def lsaf_register_scorers(register: Any) -> None:
    register(DlpScorer)

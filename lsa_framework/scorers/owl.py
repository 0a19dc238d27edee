"""The OWL scorer: the outlier ratio (LOD) of each unit's Wanda metric.

    lsaf run --scorer owl [--scorer-opt M=5 --scorer-opt lamda=0.08]

A unit's score is the percentage of the Wanda scores |W_kj|·‖X_j‖₂ of all its linears together that
exceed M times their mean (OWL, Yin et al. 2024, ``lib/prune_all.py``). More outliers means more
important, so less sparsity; the band is ±λ around the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from lsa_framework.hookspecs import hookimpl
from lsa_framework.scorers.functions import outlier_ratio, wanda_metric
from lsa_framework.types import LinearStats, PluginOptions, Scores, Unit


class OwlOptions(PluginOptions):
    M: float = Field(default=5.0, gt=0.0, description="outlier threshold, in multiples of the mean metric")
    lamda: float = Field(default=0.08, ge=0.0, description="half-width λ of the sparsity band")


class OwlScorer:
    name: ClassVar[str] = "owl"
    Options: ClassVar[type[PluginOptions]] = OwlOptions
    needs: ClassVar[frozenset[str]] = frozenset({"input_sq_norm"})

    def __init__(self, options: Any = None) -> None:
        self.options: OwlOptions = options if options is not None else OwlOptions()

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> float:
        metrics = [wanda_metric(info.weight, stats[info.name].require("input_sq_norm")) for info in unit.linears]
        return outlier_ratio(metrics, self.options.M)

    def finish(self, values: Mapping[str, float], target: float, granularity: str) -> Scores:
        return Scores(values=dict(values), higher_is_important=True, spread=self.options.lamda)


@hookimpl
def lsaf_register_scorers(register: Any) -> None:
    register(OwlScorer)

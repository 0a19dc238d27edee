"""The usage scorer: how many calibration tokens a unit's linears read — rarely used experts get more sparsity.

    lsaf run --model ./my-mixtral --scorer usage --allocator expert [--scorer-opt spread=0.1]

A unit's score is the mean, over its linears weighted by their size, of the number of calibration tokens each
one read. A dense linear reads every token; a routed expert only those the router sent to it
(:mod:`lsa_framework.engine.expert_stats`). More tokens means more important, so less sparsity; the band
is ±``spread`` around the target. On a dense model, or at layer granularity, every unit reads every token and
the allocation is uniform. Not from a paper: the frequency heuristic of expert-pruning work, as a baseline
for the activation-based scorers (OWL is blind to usage; DLP and LSE give rarely used experts *less* sparsity).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import LinearStats, PluginOptions, Scores, Unit


class UsageOptions(PluginOptions):
    spread: float = Field(default=0.1, ge=0.0, description="half-width of the sparsity band around the target")


class UsageScorer:
    name: ClassVar[str] = "usage"
    Options: ClassVar[type[PluginOptions]] = UsageOptions
    #: the cheapest statistic: the pass runs, and every LinearStats counts its tokens anyway
    needs: ClassVar[frozenset[str]] = frozenset({"input_sq_norm"})

    def __init__(self, options: Any = None) -> None:
        self.options: UsageOptions = options if options is not None else UsageOptions()

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> float:
        sizes = [info.numel for info in unit.linears]
        tokens = [stats[info.name].ntokens for info in unit.linears]
        return sum(n * t for n, t in zip(sizes, tokens, strict=True)) / sum(sizes)

    def finish(self, values: Mapping[str, float], target: float, granularity: str) -> Scores:
        return Scores(values=dict(values), higher_is_important=True, spread=self.options.spread)


@hookimpl
def lsaf_register_scorers(register: Any) -> None:
    register(UsageScorer)

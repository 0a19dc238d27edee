"""The uniform scorer: every unit gets the target sparsity (the baseline of every paper).

    lsaf run --scorer uniform

It needs no statistics, so the engine skips the scoring pass altogether.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import LinearStats, PluginOptions, Scores, Unit


class UniformScorer:
    name: ClassVar[str] = "uniform"
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> float:
        return 0.0

    def finish(self, values: Mapping[str, float], target: float, granularity: str) -> Scores:
        return Scores(values=dict(values), higher_is_important=True, spread=0.0)


@hookimpl
def lsaf_register_scorers(register: Any) -> None:
    register(UniformScorer)

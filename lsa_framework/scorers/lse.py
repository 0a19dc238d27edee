"""The LSA scorer: the greedy linear reconstruction error (LSE) of each unit.

    lsaf run --scorer lse [--scorer-opt group_size=128 --scorer-opt ratio=0.5 --scorer-opt beta=0.15]

For every linear, :func:`~lsa_framework.scorers.functions.lse_error` removes ``ratio`` of each
output row (per group of ``group_size`` input columns) greedily by least output error and returns
that error; a unit's score is the mean over its linears (layer: the seven linears; block: q,k,v,o or
gate,up,down; projection: the linear itself). More error means less important, so more sparsity.

The spread β defaults as in the reference (BeiYazi0/LSA ``layersp/blk.py``): at layer granularity
a table by target, {0.1: 0.06, 0.2: 0.02, 0.3: 0.04, 0.4: 0.02, 0.5: 0.04, 0.6: 0.10, 0.7: 0.15,
0.8: 0.12}; at block/projection granularity the README's ``--Lamda 0.07``. Differences: the
reference indexes the table by ``int(target*10)`` (so 0.55 → 0.04 and 0.9 fails); we use the table
only for targets that are a multiple of 0.1 and 0.07 for every other target.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import Field

from lsa_framework.hookspecs import hookimpl
from lsa_framework.scorers.functions import lse_error
from lsa_framework.types import LinearInfo, LinearStats, PluginOptions, Scores, Unit

#: β by round(target·10) at layer granularity (reference table; index 0 is its --Lamda, N:M only).
LAYER_BETA: dict[int, float] = {1: 0.06, 2: 0.02, 3: 0.04, 4: 0.02, 5: 0.04, 6: 0.10, 7: 0.15, 8: 0.12}
#: β at block/projection granularity and for targets off the table (README's --Lamda 0.07).
DEFAULT_BETA = 0.07


def default_beta(target: float, granularity: str) -> float:
    """The reference's β for ``target`` at ``granularity`` (see the module docstring)."""
    if granularity != "layer":
        return DEFAULT_BETA
    tenths = round(target * 10)
    if abs(target * 10 - tenths) < 1e-6 and tenths in LAYER_BETA:
        return LAYER_BETA[tenths]
    return DEFAULT_BETA


class LseOptions(PluginOptions):
    group_size: int = Field(default=128, ge=0, description="input columns per greedy group (0: whole row)")
    ratio: float = Field(default=0.5, gt=0.0, lt=1.0, description="share of each row removed in the search")
    beta: float | None = Field(default=None, ge=0.0, description="half-width of the sparsity band (None: reference)")


class LseScorer:
    name: ClassVar[str] = "lse"
    Options: ClassVar[type[PluginOptions]] = LseOptions
    needs: ClassVar[frozenset[str]] = frozenset({"gram"})

    def __init__(self, options: Any = None) -> None:
        self.options: LseOptions = options if options is not None else LseOptions()
        # Per-linear errors of the current pass: when several allocators' units are scored from the
        # same statistics (lsaf bench), each linear's search runs once. Weak references to the Gram
        # tell a new pass from the current one without keeping the Grams alive.
        self._errors: dict[str, tuple[weakref.ref[torch.Tensor], float]] = {}

    def linear_error(self, info: LinearInfo, stats: LinearStats) -> float:
        gram = stats.require("gram")
        cached = self._errors.get(info.name)
        if cached is not None and cached[0]() is gram:
            return cached[1]
        error = lse_error(info.weight, gram, self.options.group_size, self.options.ratio)
        self._errors[info.name] = (weakref.ref(gram), error)
        return error

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> float:
        errors = [self.linear_error(info, stats[info.name]) for info in unit.linears]
        return sum(errors) / len(errors)

    def finish(self, values: Mapping[str, float], target: float, granularity: str) -> Scores:
        beta = self.options.beta if self.options.beta is not None else default_beta(target, granularity)
        return Scores(values=dict(values), higher_is_important=False, spread=beta)


@hookimpl
def lsaf_register_scorers(register: Any) -> None:
    register(LseScorer)

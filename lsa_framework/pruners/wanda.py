"""Wanda: prune by |W_ij|·‖X_j‖₂, weight magnitude times input activation norm (Sun et al. 2023).

    lsaf run --pruner wanda [--pruner-opt rounding=auto|floor|exact]

Unstructured: the smallest scores of each output row. N:M: the N smallest of every M consecutive
inputs of each row. No weight update. Needs ``input_sq_norm`` (Σ x_j² per input channel over the
calibration tokens, divided by the number of sequences).

How many weights a row loses (``rounding``, see :func:`~lsa_framework.pruners.masks.row_mask`):
``floor`` is the reference's int(in_features·s) of every row, which falls short of s by up to one
weight per row (a 70% run realises 0.6993); ``exact`` prunes round(out·in·s) per matrix, spreading
the remainder over rows, so every linear gets its allocated count to the nearest weight (a unit of
several linears is then within one weight per linear of round(numel·s)). ``auto`` (the default) uses
``floor`` when every linear gets the same sparsity (a uniform allocation: the reference's masks, bit
for bit) and ``exact`` when the allocation differs between units (where a per-unit allocation should
be met exactly). The engine tells the pruner the whole allocation through the declared ``prepare``
capability before the pruning pass; the rounding used is recorded in run.json
(``allocation.pruning.rounding``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from lsa_framework.hookspecs import hookimpl
from lsa_framework.pruners.masks import Rounding, wanda_mask
from lsa_framework.types import LinearStats, Pattern, PluginOptions

#: Sparsities closer than this count as equal when ``auto`` decides whether an allocation is uniform.
UNIFORM_TOLERANCE = 1e-9


def is_uniform(sparsities: Mapping[str, float]) -> bool:
    """Whether every linear of an allocation has the same sparsity (up to float noise)."""
    values = list(sparsities.values())
    return not values or max(values) - min(values) <= UNIFORM_TOLERANCE


def resolve_rounding(option: str, sparsities: Mapping[str, float] | None) -> Rounding:
    """``floor``/``exact`` as given; ``auto``: floor for a uniform allocation (or none known), else exact."""
    if option == "floor":
        return "floor"
    if option == "exact":
        return "exact"
    return "floor" if sparsities is None or is_uniform(sparsities) else "exact"


class WandaOptions(PluginOptions):
    rounding: Literal["auto", "floor", "exact"] = Field(
        default="auto",
        description="pruned weights per row: floor (the reference's int(in·s)), exact (round(out·in·s) per "
        "matrix), auto (floor for uniform allocations, exact for non-uniform ones)",
    )


class WandaPruner:
    name: ClassVar[str] = "wanda"
    needs: ClassVar[frozenset[str]] = frozenset({"input_sq_norm"})
    capabilities: ClassVar[frozenset[str]] = frozenset({"prepare"})
    Options: ClassVar[type[PluginOptions]] = WandaOptions

    def __init__(self, options: WandaOptions | None = None) -> None:
        self.options: WandaOptions = options if options is not None else WandaOptions()
        self.rounding: Rounding = resolve_rounding(self.options.rounding, None)

    def prepare(self, sparsities: Mapping[str, float]) -> dict[str, Any]:
        """Choose the rounding for a pruning pass with these per-linear sparsities; what run.json records."""
        self.rounding = resolve_rounding(self.options.rounding, sparsities)
        return {"rounding": self.rounding}

    def prune(self, linear: Any, stats: LinearStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Zero the lowest-scoring weights of ``linear`` in place; return the mask (True = pruned)."""
        with torch.no_grad():
            mask = wanda_mask(linear.weight, stats.require("input_sq_norm"), sparsity, pattern, self.rounding)
            linear.weight.masked_fill_(mask, 0)
        return mask


@hookimpl
def lsaf_register_pruners(register: Any) -> None:
    register(WandaPruner)

"""The ``expert`` allocator: one sparsity per routed expert, per attention block and per dense MLP.

    lsaf run --model ./mixtral-like --scorer owl --allocator expert --pruner wanda --sparsity 0.6

Units, per decoder layer i:

* ``layer.i.attention`` — the attention linears;
* ``layer.i.experts.e`` — expert e's two matrices (gate_up and down), for every routed expert;
* ``layer.i.shared_expert`` — the MLP linears of a layer with routed experts that are not routed
  (Qwen2-MoE's shared expert), or ``layer.i.mlp`` — the MLP of a layer without experts (Qwen3-MoE's
  ``mlp_only_layers``; every layer of a dense model, where this allocator equals ``block``).

Scorers score each unit from its own statistics; an expert's come from the tokens routed to it
(:mod:`lsa_framework.engine.expert_stats`), so a rarely used expert scores from little data. The score →
sparsity mapping, the rate-distortion allocation of error curves (``--scorer rd``) and the exact
parameter-weighted final step are the shared ones (:func:`lsa_framework.allocators.budget.allocate_scores`):
the mean over all units, expert parameters counted, is the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from lsa_framework.allocators.budget import allocate_scores
from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import Layout, LinearInfo, PluginOptions, Scores, Unit


class ExpertAllocator:
    """Every routed expert of every layer a unit, plus attention and the non-routed MLP per layer."""

    name: ClassVar[str] = "expert"
    granularity: ClassVar[str] = "expert"
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def units(self, layout: Layout) -> list[Unit]:
        units: list[Unit] = []
        for i, linears in enumerate(layout.linears):
            attention = tuple(info for info in linears if info.block == "attention")
            experts: dict[int, list[LinearInfo]] = {}
            for info in linears:
                if info.expert is not None:
                    experts.setdefault(info.expert, []).append(info)
            others = tuple(info for info in linears if info.block != "attention" and info.expert is None)
            if attention:
                units.append(Unit(f"layer.{i}.attention", i, attention))
            if others:
                units.append(Unit(f"layer.{i}.{'shared_expert' if experts else 'mlp'}", i, others))
            units.extend(Unit(f"layer.{i}.experts.{e}", i, tuple(experts[e])) for e in sorted(experts))
        return units

    def allocate(self, scores: Scores, sizes: Mapping[str, int], target: float) -> dict[str, float]:
        return allocate_scores(scores, sizes, target)


@hookimpl
def lsaf_register_allocators(register: Any) -> None:
    register(ExpertAllocator)

"""The built-in allocators: one sparsity per layer, per block, or per projection.

    lsaf run --allocator layer|block|projection

They differ only in how a layout is cut into units; the score → sparsity mapping and the final
exact-mean step are shared (:mod:`lsa_framework.allocators.mapping`). Scores that carry error curves
(``Scores.curves``, e.g. from ``--scorer rd``) are allocated by minimising the summed error at the
exact parameter budget instead (:func:`lsa_framework.allocators.budget.allocate_rd`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from lsa_framework.allocators.budget import allocate_scores
from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import Layout, PluginOptions, Scores, Unit


class _GranularityAllocator:
    name: ClassVar[str]
    granularity: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def units(self, layout: Layout) -> list[Unit]:
        raise NotImplementedError

    def allocate(self, scores: Scores, sizes: Mapping[str, int], target: float) -> dict[str, float]:
        return allocate_scores(scores, sizes, target)


class LayerAllocator(_GranularityAllocator):
    """One sparsity for every linear of a decoder layer (OWL, DLP, LSA layer-wise)."""

    name = "layer"
    granularity = "layer"

    def units(self, layout: Layout) -> list[Unit]:
        return [Unit(f"layer.{i}", i, tuple(linears)) for i, linears in enumerate(layout.linears)]


class BlockAllocator(_GranularityAllocator):
    """One sparsity for the attention linears and one for the MLP linears of each layer."""

    name = "block"
    granularity = "block"

    def units(self, layout: Layout) -> list[Unit]:
        units = []
        for i, linears in enumerate(layout.linears):
            for block in ("attention", "mlp"):
                members = tuple(info for info in linears if info.block == block)
                if members:
                    units.append(Unit(f"layer.{i}.{block}", i, members))
        return units


class ProjectionAllocator(_GranularityAllocator):
    """One sparsity per projection (q, k, v, o, gate, up, down) of each layer."""

    name = "projection"
    granularity = "projection"

    def units(self, layout: Layout) -> list[Unit]:
        return [
            Unit(f"layer.{i}.{info.projection}", i, (info,))
            for i, linears in enumerate(layout.linears)
            for info in linears
        ]


@hookimpl
def lsaf_register_allocators(register: Any) -> None:
    register(LayerAllocator)
    register(BlockAllocator)
    register(ProjectionAllocator)

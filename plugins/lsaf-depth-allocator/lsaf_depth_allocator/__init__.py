"""The ``depth`` allocator: sparsity grows linearly with depth, from target − δ to target + δ.

    lsaf run --allocator depth --scorer uniform --allocator-opt delta=0.1

Decoder layer i of L gets s_i = target − δ + 2δ·i/(L − 1). Deeper layers of an LLM are more
redundant than shallow ones (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More
Redundant Than You Expect", arXiv:2403.03853; Gromov et al. 2024, "The Unreasonable Ineffectiveness
of the Deeper Layers", arXiv:2403.17887), and the allocations OWL, DLP and LSA compute from data
mostly rise with depth as well; this allocator takes that shape as a prior and needs no data. It
ignores the scorer's scores and says so (``uses_scores = False``), so no scoring pass runs whatever
``--scorer`` is.

The last step is the framework's ``finalize``: clip to [0, 0.99], spread what was clipped over the
other layers by parameter count, and check that the parameter-weighted mean is exactly the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from lsa_framework import finalize, hookimpl
from lsa_framework.types import Layout, PluginOptions, Scores, Unit
from pydantic import Field


class DepthOptions(PluginOptions):
    """Options of the ``depth`` allocator, given as ``--allocator-opt delta=0.1``."""

    delta: float = Field(
        default=0.1,
        ge=0.0,
        lt=0.5,
        description="half-width δ of the band: layer sparsities go from target − δ to target + δ",
    )


class DepthAllocator:
    """One sparsity per decoder layer, rising linearly with depth."""

    name: ClassVar[str] = "depth"
    granularity: ClassVar[str] = "layer"
    uses_scores: ClassVar[bool] = False  # a fixed profile: the engine skips the scoring pass
    Options: ClassVar[type[PluginOptions]] = DepthOptions

    def __init__(self, options: DepthOptions | None = None) -> None:
        self.options = options if options is not None else DepthOptions()

    def units(self, layout: Layout) -> list[Unit]:
        """One unit per decoder layer, named ``layer.<index>``."""
        return [Unit(f"layer.{i}", i, tuple(linears)) for i, linears in enumerate(layout.linears) if linears]

    def allocate(self, scores: Scores, sizes: Mapping[str, int], target: float) -> dict[str, float]:
        """Sparsities rising linearly with the layer index; ``scores`` are not used."""
        names = sorted(sizes, key=lambda name: int(name.rsplit(".", 1)[1]))  # by layer index
        delta = self.options.delta
        last = max(len(names) - 1, 1)
        raw = {name: target - delta + 2 * delta * i / last for i, name in enumerate(names)}
        return finalize(raw, sizes, target)


@hookimpl
def lsaf_register_allocators(register: Any) -> None:
    register(DepthAllocator)

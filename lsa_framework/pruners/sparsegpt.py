"""SparseGPT: prune with second-order (OBS) weight updates (Frantar & Alistarh 2023).

    lsaf run --pruner sparsegpt --pruner-opt blocksize=128 --pruner-opt percdamp=0.01

The mask is chosen per block of ``blocksize`` input columns, jointly over all rows, and the kept
weights are updated to compensate for the pruned ones; see
:func:`lsa_framework.pruners.masks.sparsegpt_prune`. Needs ``gram`` (H = 2/n·ΣXᵀX).

Linears that read the same input (q/k/v, gate/up) share H, so :meth:`SparseGPTPruner.prune_group`
prunes them together: one factorisation of H and one column loop over their stacked rows, with the
same masks as pruning each alone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from lsa_framework.hookspecs import hookimpl
from lsa_framework.pruners.masks import sparsegpt_prune, sparsegpt_prune_stacked
from lsa_framework.types import LinearStats, Pattern, PluginOptions


class SparseGPTPruner:
    name: ClassVar[str] = "sparsegpt"
    needs: ClassVar[frozenset[str]] = frozenset({"gram"})
    capabilities: ClassVar[frozenset[str]] = frozenset({"prune_group", "updates_weights"})

    class Options(PluginOptions):
        """SparseGPT options (defaults as in the reference code)."""

        blocksize: int = Field(default=128, ge=1, le=65536, description="columns per block of mask selection")
        percdamp: float = Field(default=0.01, ge=0.0, le=1.0, description="damping, share of mean(diag H)")

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def prune(self, linear: Any, stats: LinearStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Prune ``linear`` in place, writing the updated weights; return the mask (True = pruned)."""
        with torch.no_grad():
            new_weight, mask = sparsegpt_prune(
                linear.weight,
                stats.require("gram"),
                sparsity,
                pattern,
                blocksize=self.options.blocksize,
                percdamp=self.options.percdamp,
            )
            linear.weight.copy_(new_weight)
        return mask

    def prune_group(
        self, linears: list[Any], stats: LinearStats, sparsities: list[float], pattern: Pattern
    ) -> list[torch.Tensor]:
        """Prune linears that read the same input (so share ``stats``' H) in place; return their masks.

        Each mask is the one :meth:`prune` would give that linear with its own sparsity, and the weights
        agree to rounding, but H⁻¹ is factored once and the per-column work of SparseGPT's loop is
        shared by all rows, which roughly halves the time for q/k/v-sized groups.
        """
        with torch.no_grad():
            results = sparsegpt_prune_stacked(
                [linear.weight for linear in linears],
                stats.require("gram"),
                sparsities,
                pattern,
                blocksize=self.options.blocksize,
                percdamp=self.options.percdamp,
            )
            for linear, (new_weight, _) in zip(linears, results, strict=True):
                linear.weight.copy_(new_weight)
        return [mask for _, mask in results]


@hookimpl
def lsaf_register_pruners(register: Any) -> None:
    register(SparseGPTPruner)

"""Magnitude pruning: remove the weights with the smallest |W|.

    lsaf run --pruner magnitude

Unstructured: one threshold for the whole weight matrix, as ``prune_magnitude`` in the Wanda
repository (but with an exact count, see :mod:`lsa_framework.pruners.masks`). N:M: the N smallest
|W| of every M consecutive inputs of each row. Needs no calibration statistics.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lsa_framework.hookspecs import hookimpl
from lsa_framework.pruners.masks import magnitude_mask
from lsa_framework.types import LinearStats, Pattern, PluginOptions


class MagnitudePruner:
    name: ClassVar[str] = "magnitude"
    needs: ClassVar[frozenset[str]] = frozenset()

    class Options(PluginOptions):
        """Magnitude pruning has no options."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def prune(self, linear: Any, stats: LinearStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Zero the smallest-|W| weights of ``linear`` in place; return the mask (True = pruned)."""
        with torch.no_grad():
            mask = magnitude_mask(linear.weight, sparsity, pattern)
            linear.weight.masked_fill_(mask, 0)
        return mask


@hookimpl
def lsaf_register_pruners(register: Any) -> None:
    register(MagnitudePruner)

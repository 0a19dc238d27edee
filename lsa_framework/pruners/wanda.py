"""Wanda: prune by |W_ij|·‖X_j‖₂, weight magnitude times input activation norm (Sun et al. 2023).

    lsaf run --pruner wanda

Unstructured: the int(in_features·s) smallest scores of each output row. N:M: the N smallest of
every M consecutive inputs of each row. No weight update. Needs ``input_sq_norm`` (Σ x_j² per input
channel over the calibration tokens, divided by the number of sequences).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lsa_framework.hookspecs import hookimpl
from lsa_framework.pruners.masks import wanda_mask
from lsa_framework.types import LinearStats, Pattern, PluginOptions


class WandaPruner:
    name: ClassVar[str] = "wanda"
    needs: ClassVar[frozenset[str]] = frozenset({"input_sq_norm"})

    class Options(PluginOptions):
        """Wanda has no options."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def prune(self, linear: Any, stats: LinearStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Zero the lowest-scoring weights of ``linear`` in place; return the mask (True = pruned)."""
        with torch.no_grad():
            mask = wanda_mask(linear.weight, stats.require("input_sq_norm"), sparsity, pattern)
            linear.weight.masked_fill_(mask, 0)
        return mask


@hookimpl
def lsaf_register_pruners(register: Any) -> None:
    register(WandaPruner)

"""Sparsity counted from the weights themselves: per linear, per layer and over all pruned linears.

Counting zeros (rather than trusting the masks) also reports zeros the model had before pruning,
e.g. the ~0.03% exact zeros of the Q4_1-dequantised default model.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import EvalContext, Layout, PluginOptions


def count_sparsity(layout: Layout) -> dict[str, float]:
    """``sparsity`` (global), ``sparsity.layer.i`` and ``sparsity.<linear name>`` fractions of zeros."""
    metrics: dict[str, float] = {}
    total_zeros = total = 0
    for index, linears in enumerate(layout.linears):
        layer_zeros = layer_total = 0
        with layout.resident(index):
            for info in linears:
                weight = info.weight
                zeros = int((weight == 0).sum())
                metrics[f"sparsity.{info.name}"] = zeros / weight.numel()
                layer_zeros += zeros
                layer_total += weight.numel()
        metrics[f"sparsity.layer.{index}"] = layer_zeros / layer_total
        total_zeros += layer_zeros
        total += layer_total
    metrics["sparsity"] = total_zeros / total
    return metrics


class SparsityEvaluator:
    name: ClassVar[str] = "sparsity"
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    headline: ClassVar[str] = "sparsity"
    lower_is_better: ClassVar[bool | None] = None  # descriptive: the realised share of zeros

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, float]:
        if context.layout is None:
            from lsa_framework.model.discovery import discover_layout

            return count_sparsity(discover_layout(model))
        return count_sparsity(context.layout)


@hookimpl
def lsaf_register_evaluators(register: Any) -> None:
    register(SparsityEvaluator)

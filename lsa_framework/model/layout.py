"""Find the layout (decoder layers and their prunable linears) of a model via architecture plugins."""

from __future__ import annotations

from typing import Any

from lsa_framework import registry
from lsa_framework.errors import UnsupportedArchitectureError
from lsa_framework.types import Layout


def _describe(model: Any) -> str:
    names = sorted({type(m).__name__ for m in model.modules()} - {type(model).__name__})
    return f"{type(model).__name__} (modules: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"


def find_layout(model: Any) -> Layout:
    """The layout from the first registered architecture plugin that recognises ``model``."""
    architectures = registry.collect("architectures")
    for entry in architectures.values():
        architecture = entry.cls()
        if architecture.matches(model):
            return architecture.layout(model)
    raise UnsupportedArchitectureError(
        f"No architecture plugin understands {_describe(model)}; supported: "
        f"{', '.join(sorted(architectures)) or 'none'} (decoder layers with q/k/v/o and gate/up/down "
        "projections); register an architecture plugin for this model."
    )

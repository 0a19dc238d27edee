"""Which modules are normalisation layers (shared by recovery's train sets and the output-norm statistics)."""

from __future__ import annotations

import torch

_NORM_TYPES: tuple[type[torch.nn.Module], ...] = (torch.nn.LayerNorm, torch.nn.RMSNorm)


def is_norm(module: torch.nn.Module) -> bool:
    """LayerNorm or RMSNorm, torch's or a model family's own class."""
    # transformers' RMSNorms (LlamaRMSNorm, Gemma3RMSNorm, ...) are their own classes, not torch.nn.RMSNorm.
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))

"""Saved tiny mixtures of experts for end-to-end tests, and plain-torch references of what pruning them means.

    from tests.moe_models import save_moe
    folder = save_moe("mixtral", tmp_path / "mixtral")        # 2 layers, 4 experts, top-2, word-level tokenizer

``unrouted=True`` makes layer 0's router never choose expert 3 on any input: one embedding channel is a
large positive constant, so after the RMSNorm that channel is positive for every token, and the router's
row for expert 3 is a large negative multiple of it. The rest of the model is the random tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.architectures import tiny_model
from tests.conftest import make_tokenizer

UNROUTED_EXPERT = 3
CHANNEL = 5


def make_moe(family: str, num_layers: int = 2, seed: int = 0, unrouted: bool = False) -> Any:
    model = tiny_model(family, num_layers=num_layers, seed=seed)
    if unrouted:
        with torch.no_grad():
            model.model.embed_tokens.weight[:, CHANNEL] = 0.1
            router = model.model.layers[0].mlp.gate.weight
            router[UNROUTED_EXPERT].zero_()
            router[UNROUTED_EXPERT, CHANNEL] = -5.0
    return model


def save_moe(family: str, folder: Path, num_layers: int = 2, unrouted: bool = False, shard: str | None = None) -> Path:
    """A tiny random MoE model with the tests' tokenizer, saved as ``from_pretrained`` reads it."""
    model = make_moe(family, num_layers, unrouted=unrouted)
    if shard is None:
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, max_shard_size=shard)
    make_tokenizer().save_pretrained(folder)
    return folder


def row_smallest(metric: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the k smallest entries by a stable ascending sort (ties: lowest index first)."""
    mask = torch.zeros_like(metric, dtype=torch.bool)
    order = torch.sort(metric, dim=1, stable=True).indices[:, :k]
    return mask.scatter_(1, order, True)


def matrix_smallest(metric: torch.Tensor, k: int) -> torch.Tensor:
    """The k smallest entries of the whole matrix by a stable ascending sort."""
    flat = torch.zeros(metric.numel(), dtype=torch.bool)
    flat[torch.sort(metric.reshape(-1), stable=True).indices[:k]] = True
    return flat.reshape(metric.shape)

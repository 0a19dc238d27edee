"""A tiny Llama pruned with plain torch (the 60% smallest |W| of each row of every linear but the head),
token windows of the Markov text, and a loss computed in plain torch."""

from __future__ import annotations

import copy
from functools import cache

import torch

from tests.conftest import make_text, make_tiny_llama, make_tokenizer

SPARSITY = 0.6
SEQLEN = 24


@cache
def _pruned_template() -> torch.nn.Module:
    model = make_tiny_llama(num_layers=2, seed=0)
    head = model.get_output_embeddings()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                w = module.weight
                k = int(w.shape[1] * SPARSITY)
                w.scatter_(1, w.abs().argsort(dim=1)[:, :k], 0)
    return model


def pruned_model() -> torch.nn.Module:
    """A fresh copy of the same pruned tiny Llama."""
    return copy.deepcopy(_pruned_template())


def pruned_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    head = model.get_output_embeddings()
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}


@cache
def windows() -> torch.Tensor:
    ids = make_tokenizer()(" ".join(make_text(8, 200, seed=1)), add_special_tokens=False)["input_ids"]
    ids = torch.tensor(ids[: (len(ids) // SEQLEN) * SEQLEN])
    return ids.view(-1, SEQLEN)[:16].clone()


def plain_loss(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """Mean next-token cross-entropy, computed from the logits in plain torch."""
    with torch.no_grad():
        logits = model(input_ids=batch).logits[:, :-1]
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)))


def zero_sets(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Where each pruned linear's weight is exactly zero, straight from the weights."""
    out = {}
    for name, module in model.named_modules():
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if isinstance(base, torch.nn.Linear) and name.endswith("_proj"):
            out[name] = base.weight.detach() == 0
    return out


class Killed(Exception):
    """Stands for a SIGKILL in the middle of a run."""


def kill_at(step: int):
    def on_step(done: int, loss: float) -> None:
        if done == step:
            raise Killed

    return on_step

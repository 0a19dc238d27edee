"""Wanda's ``rounding`` option: ``auto`` keeps the reference's floor masks for uniform allocations and
hits every linear's count exactly for non-uniform ones; the engine tells the pruner through ``prepare``."""

from __future__ import annotations

import math

import pytest
import torch

from lsa_framework.pruners.wanda import WandaOptions, WandaPruner
from lsa_framework.types import LinearStats, Pattern


def _linear(out: int, inp: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(inp, out, bias=False)


def _stats(inp: int, seed: int) -> LinearStats:
    g = torch.Generator().manual_seed(seed)
    return LinearStats(4, 64, input_sq_norm=torch.rand(inp, generator=g) + 0.1)


def _floor_mask(weight: torch.Tensor, sq_norm: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference rule in plain torch: int(in·s) smallest |W|·sqrt(norm) per row, ties by position."""
    metric = weight.abs() * sq_norm.sqrt()[None, :]
    k = int(weight.shape[1] * sparsity)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    for r in range(weight.shape[0]):
        order = sorted(range(weight.shape[1]), key=lambda j: (float(metric[r, j]), j))
        mask[r, order[:k]] = True
    return mask


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.33])
def test_auto_is_the_reference_floor_for_a_uniform_allocation(sparsity: float) -> None:
    pruner = WandaPruner()
    assert pruner.prepare({"a": sparsity, "b": sparsity}) == {"rounding": "floor"}
    linear, stats = _linear(12, 37, 0), _stats(37, 1)
    expected = _floor_mask(linear.weight.detach().clone(), stats.require("input_sq_norm"), sparsity)
    mask = pruner.prune(linear, stats, sparsity, Pattern())
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("sparsity", [0.7, 0.333, 0.61])
def test_auto_counts_exactly_for_a_non_uniform_allocation(sparsity: float) -> None:
    pruner = WandaPruner()
    assert pruner.prepare({"a": sparsity, "b": sparsity + 0.05}) == {"rounding": "exact"}
    linear = _linear(12, 37, 2)
    mask = pruner.prune(linear, _stats(37, 3), sparsity, Pattern())
    assert int(mask.sum()) == math.floor(12 * 37 * sparsity + 0.5)
    assert int((linear.weight == 0).sum()) == int(mask.sum())
    # each row prunes k or k + 1 weights
    per_row = mask.sum(dim=1)
    assert int(per_row.max() - per_row.min()) <= 1


def test_floor_and_exact_options_ignore_the_allocation() -> None:
    floor, exact = WandaPruner(WandaOptions(rounding="floor")), WandaPruner(WandaOptions(rounding="exact"))
    assert floor.prepare({"a": 0.5, "b": 0.7}) == {"rounding": "floor"}
    assert exact.prepare({"a": 0.5, "b": 0.5}) == {"rounding": "exact"}
    linear = _linear(6, 10, 4)
    mask = exact.prune(linear, _stats(10, 5), 0.75, Pattern())
    assert int(mask.sum()) == 45  # round(60 · 0.75); floor would prune 7 per row = 42


def test_without_prepare_wanda_behaves_as_the_reference() -> None:
    linear, stats = _linear(8, 20, 6), _stats(20, 7)
    expected = _floor_mask(linear.weight.detach().clone(), stats.require("input_sq_norm"), 0.7)
    assert torch.equal(WandaPruner().prune(linear, stats, 0.7, Pattern()), expected)

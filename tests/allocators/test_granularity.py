"""The layer / block / projection allocators on a fake GQA layout."""

from __future__ import annotations

import pytest
import torch

from lsa_framework.allocators.granularity import BlockAllocator, LayerAllocator, ProjectionAllocator
from lsa_framework.types import Layout, Scores
from tests.fakes import fake_layout

HIDDEN, KV, MLP = 64, 16, 128


def check_partition(units: list, layout: Layout) -> None:
    names = [info.name for unit in units for info in unit.linears]
    assert sorted(names) == sorted(info.name for info in layout.all_linears())
    assert len(names) == len(set(names))
    assert len({unit.name for unit in units}) == len(units)
    for unit in units:
        assert all(info.layer == unit.layer for info in unit.linears)
        assert unit.numel == sum(info.module.weight.numel() for info in unit.linears)


def test_layer_units() -> None:
    layout = fake_layout()
    units = LayerAllocator().units(layout)
    assert [u.name for u in units] == ["layer.0", "layer.1", "layer.2"]
    assert all(len(u.linears) == 7 for u in units)
    assert units[0].numel == 2 * 64 * 64 + 2 * 16 * 64 + 3 * 128 * 64
    check_partition(units, layout)


def test_block_units() -> None:
    layout = fake_layout()
    units = BlockAllocator().units(layout)
    assert [u.name for u in units] == [f"layer.{i}.{b}" for i in range(3) for b in ("attention", "mlp")]
    for u in units:
        expected = ("q", "k", "v", "o") if u.name.endswith("attention") else ("gate", "up", "down")
        assert tuple(info.projection for info in u.linears) == expected
    check_partition(units, layout)


def test_projection_units() -> None:
    layout = fake_layout()
    units = ProjectionAllocator().units(layout)
    assert len(units) == 21
    assert units[1].name == "layer.0.k" and units[1].numel == 16 * 64
    assert all(len(u.linears) == 1 for u in units)
    check_partition(units, layout)


@pytest.mark.parametrize("allocator", [LayerAllocator(), BlockAllocator(), ProjectionAllocator()])
@pytest.mark.parametrize("spread", [0.0, 0.07, 0.3])
def test_allocate_hits_the_target(allocator: LayerAllocator, spread: float) -> None:
    units = allocator.units(fake_layout())
    sizes = {u.name: u.numel for u in units}
    gen = torch.Generator().manual_seed(0)
    values = {u.name: float(v) for u, v in zip(units, torch.rand(len(units), generator=gen), strict=True)}
    result = allocator.allocate(Scores(values, False, spread), sizes, 0.7)
    assert set(result) == set(sizes)
    assert all(0.0 <= s <= 0.99 for s in result.values())
    total = sum(sizes.values())
    assert abs(sum(result[n] * sizes[n] for n in result) / total - 0.7) <= 1e-4
    if spread == 0.0:
        assert all(s == pytest.approx(0.7) for s in result.values())

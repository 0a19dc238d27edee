"""``--allocator expert``: every routed expert a unit, plus attention and the non-routed MLP per layer."""

from __future__ import annotations

import itertools

import pytest
import torch

from lsa_framework import registry
from lsa_framework.allocators.expert import ExpertAllocator
from lsa_framework.allocators.granularity import BlockAllocator
from lsa_framework.allocators.mapping import MAX_SPARSITY
from lsa_framework.model.discovery import discover_layout
from lsa_framework.types import Scores
from tests.architectures import MOE_FAMILIES, tiny_model

torch.set_num_threads(1)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_units_partition_the_layout_by_expert(family: str):
    model = tiny_model(family, num_layers=2)
    layout = discover_layout(model)
    units = ExpertAllocator().units(layout)
    names = [info.name for unit in units for info in unit.linears]
    assert sorted(names) == sorted(info.name for info in layout.all_linears()) and len(names) == len(set(names))
    for index, layer in enumerate(model.model.layers):
        mine = {u.name: u for u in units if u.layer == index}
        experts = getattr(getattr(layer.mlp, "experts", None), "gate_up_proj", None)
        expected = {f"layer.{index}.attention"}
        if experts is not None:
            expected |= {f"layer.{index}.experts.{e}" for e in range(experts.shape[0])}
            for e in range(experts.shape[0]):  # an expert's unit: its two matrices, all its parameters
                unit = mine[f"layer.{index}.experts.{e}"]
                assert {i.parameter for i in unit.linears} == {"gate_up_proj", "down_proj"}
                assert unit.numel == experts[e].numel() + layer.mlp.experts.down_proj[e].numel()
        if family == "qwen2_moe":
            expected.add(f"layer.{index}.shared_expert")
            assert mine[f"layer.{index}.shared_expert"].numel == sum(
                p.numel() for p in layer.mlp.shared_expert.parameters()
            )
        if experts is None:
            expected.add(f"layer.{index}.mlp")  # Qwen3-MoE's dense layer
        assert set(mine) == expected


def test_a_dense_model_gets_the_block_units():
    layout = discover_layout(tiny_model("llama", num_layers=2))
    expert_units = ExpertAllocator().units(layout)
    block_units = BlockAllocator().units(layout)
    assert [(u.name, [i.name for i in u.linears]) for u in expert_units] == [
        (u.name, [i.name for i in u.linears]) for u in block_units
    ]


@pytest.mark.parametrize("spread", [0.05, 0.2])
def test_allocation_is_non_uniform_and_exact_counting_expert_parameters(spread: float):
    layout = discover_layout(tiny_model("qwen2_moe", num_layers=2))
    allocator = ExpertAllocator()
    units = allocator.units(layout)
    sizes = {u.name: u.numel for u in units}
    draws = torch.rand(len(units), generator=torch.Generator().manual_seed(1))
    values = {u.name: float(v) for u, v in zip(units, draws, strict=True)}
    target = 0.6
    got = allocator.allocate(Scores(values, True, spread), sizes, target)
    pruned = sum(got[n] * sizes[n] for n in sizes)
    # the parameter count, from the model itself: attention, shared expert and every expert's parameters
    total = sum(info.weight.numel() for info in layout.all_linears())
    assert sum(sizes.values()) == total
    assert pruned / total == pytest.approx(target, abs=1e-6)
    assert all(0.0 <= s <= MAX_SPARSITY for s in got.values())
    experts = [got[n] for n in got if ".experts." in n]
    assert max(experts) - min(experts) > spread / 4  # experts get different sparsities
    # higher score = more important = less sparsity, among the experts (same size, no clipping)
    ordered = sorted((values[n], got[n]) for n in got if ".experts." in n)
    assert all(a[1] >= b[1] - 1e-12 for a, b in itertools.pairwise(ordered))


def test_registered_as_a_built_in_allocator():
    entry = registry.lookup("allocators", "expert")
    assert entry.cls is ExpertAllocator and entry.distribution == registry.BUILTIN_DISTRIBUTION
    assert ExpertAllocator.granularity == "expert"


def test_error_curves_get_the_rate_distortion_allocation():
    """With curves (``--scorer rd``), experts whose error grows slowly get more sparsity, and the
    total error is no larger than any exact-budget allocation on a coarse grid of alternatives."""
    layout = discover_layout(tiny_model("mixtral", num_layers=2))
    allocator = ExpertAllocator()
    units = allocator.units(layout)
    sizes = {u.name: u.numel for u in units}
    levels = [0.0, 0.2, 0.4, 0.6, 0.8]
    steepness = {u.name: 1.0 + k for k, u in enumerate(units)}  # later units: steeper error
    curves = {n: [steepness[n] * s**2 for s in levels] for n in sizes}
    got = allocator.allocate(Scores({n: 0.0 for n in sizes}, True, 0.0, curves, levels), sizes, 0.5)
    total = sum(sizes.values())
    assert sum(got[n] * sizes[n] for n in sizes) / total == pytest.approx(0.5, abs=1e-6)
    experts = [u.name for u in units if ".experts." in u.name]
    assert got[experts[0]] > got[experts[-1]] + 0.1  # the flattest expert is pruned most

    def error(sparsities):  # each curve read piecewise-linearly, as the budget solver reads it
        return sum(_interp(curves[n], levels, sparsities[n]) for n in sizes)

    uniform = dict.fromkeys(sizes, 0.5)
    assert error(got) <= error(uniform) + 1e-9


def _interp(curve, levels, s):
    for (x0, y0), (x1, y1) in itertools.pairwise(zip(levels, curve, strict=True)):
        if x0 <= s <= x1:
            return y0 + (y1 - y0) * (s - x0) / (x1 - x0)
    raise AssertionError(s)

"""A pruner with ``prune_group`` gets each input group in one call; others get one call per linear."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from lsa_framework.engine.plugins import PrunerHandle
from lsa_framework.errors import PluginError
from lsa_framework.types import LinearStats, Pattern
from tests.fakes import fake_layout


class _Recorder:
    """Zeroes the first input column; records how it was called."""

    name: ClassVar[str] = "recorder"
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, tuple[float, ...]]] = []

    def prune(self, linear: torch.nn.Linear, stats: LinearStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        self.calls.append(("prune", 1, (sparsity,)))
        mask = torch.zeros_like(linear.weight, dtype=torch.bool)
        mask[:, 0] = True
        return mask


class _GroupRecorder(_Recorder):
    capabilities: ClassVar[frozenset[str]] = frozenset({"prune_group"})

    def __init__(self, drop_one: bool = False) -> None:
        super().__init__()
        self.drop_one = drop_one

    def prune_group(self, linears: list[Any], stats: LinearStats, sparsities: list[float], pattern: Pattern) -> list:
        self.calls.append(("prune_group", len(linears), tuple(sparsities)))
        masks = [torch.zeros_like(m.weight, dtype=torch.bool) for m in linears]
        return masks[:-1] if self.drop_one else masks


def _sparsities(layout: Any) -> dict[str, float]:
    return {info.name: 0.1 * (k + 1) for k, info in enumerate(layout.linears[0])}


def test_group_pruner_is_called_once_per_input_group():
    layout = fake_layout(num_layers=1)
    instance = _GroupRecorder()
    stats = {info.name: LinearStats(0, 0) for info in layout.linears[0]}
    masks = PrunerHandle("pruners", "recorder", "tests", instance).prune_layer(
        layout.linears[0], stats, _sparsities(layout), Pattern.parse("unstructured")
    )
    assert set(masks) == {info.name for info in layout.linears[0]}
    assert [(kind, n) for kind, n, _ in instance.calls] == [("prune_group", 3), ("prune_group", 1),
                                                            ("prune_group", 2), ("prune_group", 1)]  # fmt: skip
    assert instance.calls[0][2] == pytest.approx((0.1, 0.2, 0.3))  # q, k, v with their own sparsities


def test_plain_pruner_is_called_per_linear_and_skips_unallocated():
    layout = fake_layout(num_layers=1)
    instance = _Recorder()
    stats = {info.name: LinearStats(0, 0) for info in layout.linears[0]}
    wanted = {k: v for k, v in _sparsities(layout).items() if not k.endswith("down_proj")}
    masks = PrunerHandle("pruners", "recorder", "tests", instance).prune_layer(
        layout.linears[0], stats, wanted, Pattern.parse("unstructured")
    )
    assert len(instance.calls) == 6 and set(masks) == set(wanted)


def test_group_pruner_returning_too_few_masks_is_named():
    layout = fake_layout(num_layers=1)
    stats = {info.name: LinearStats(0, 0) for info in layout.linears[0]}
    plugin = PrunerHandle("pruners", "recorder", "acme-pruners", _GroupRecorder(drop_one=True))
    with pytest.raises(PluginError, match=r"'recorder' from package 'acme-pruners' returned 2 masks for 3"):
        plugin.prune_layer(layout.linears[0], stats, _sparsities(layout), Pattern.parse("unstructured"))

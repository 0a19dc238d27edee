"""Row-wise masks with exact realised counts (``rounding="exact"``) and the unchanged floor default."""

from __future__ import annotations

import math

import pytest
import torch

from lsa_framework.errors import BadInputError
from lsa_framework.pruners.masks import exact_count, row_mask, wanda_mask
from lsa_framework.types import Pattern

SHAPES = [(1, 16), (3, 10), (7, 48), (32, 64), (5, 7)]
SPARSITIES = [0.0, 0.013, 0.25, 0.29, 0.5, 0.6993, 0.7, 0.77, 0.99, 1.0]


def _metric(shape: tuple[int, int], seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(0, 4, shape, generator=g).float()
    return torch.rand(shape, generator=g)


def _stable_order(row: torch.Tensor) -> list[int]:
    values = row.tolist()
    return sorted(range(len(values)), key=lambda j: (values[j], j))


def _reference_exact(metric: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Plain Python: stable order per row; k per row, +1 for the r rows with the smallest next entry."""
    rows, cols = metric.shape
    total = math.floor(rows * cols * sparsity + 0.5)
    k, r = divmod(total, rows)
    orders = [_stable_order(metric[row]) for row in range(rows)]
    extra: set[int] = set()
    if r:
        nxt = [(metric[row, orders[row][k]].item(), row) for row in range(rows)]
        extra = {row for _, row in sorted(nxt)[:r]}
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for row in range(rows):
        for j in orders[row][: k + (row in extra)]:
            mask[row, j] = True
    return mask


def _reference_floor(metric: torch.Tensor, sparsity: float) -> torch.Tensor:
    rows, cols = metric.shape
    k = int(cols * sparsity)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for row in range(rows):
        for j in _stable_order(metric[row])[:k]:
            mask[row, j] = True
    return mask


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_exact_counts_per_row_and_in_total(shape: tuple[int, int], ties: bool) -> None:
    rows, cols = shape
    for seed, sparsity in enumerate(SPARSITIES):
        metric = _metric(shape, seed, ties)
        mask = row_mask(metric, sparsity, rounding="exact")
        total = math.floor(rows * cols * sparsity + 0.5)
        assert int(mask.sum()) == total == exact_count(rows * cols, sparsity)
        per_row = mask.sum(1)
        assert set(per_row.tolist()) <= {total // rows, total // rows + 1}
        assert torch.equal(mask, _reference_exact(metric, sparsity)), (seed, sparsity)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_floor_is_the_default_and_unchanged(shape: tuple[int, int], ties: bool) -> None:
    for seed, sparsity in enumerate(SPARSITIES):
        metric = _metric(shape, seed, ties)
        default = row_mask(metric, sparsity)
        assert torch.equal(default, row_mask(metric, sparsity, rounding="floor"))
        assert torch.equal(default, _reference_floor(metric, sparsity))


def test_exact_masks_are_nested_as_the_sparsity_grows() -> None:
    metric = _metric((9, 40), 3, ties=True)
    previous = torch.zeros(9, 40, dtype=torch.bool)
    for count in range(9 * 40 + 1):
        mask = row_mask(metric, count / 360, rounding="exact")
        assert int(mask.sum()) == count
        assert not (previous & ~mask).any()
        previous = mask


def test_the_70_percent_example_realises_the_target() -> None:
    metric = _metric((64, 576), 0, ties=False)
    floor = row_mask(metric, 0.7)
    exact = row_mask(metric, 0.7, rounding="exact")
    assert float(floor.float().mean()) == pytest.approx(int(576 * 0.7) / 576)  # 0.69965
    assert int(exact.sum()) == round(64 * 576 * 0.7)


def test_wanda_mask_passes_rounding_and_nm_ignores_it() -> None:
    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 24, generator=g)
    norm = torch.rand(24, generator=g) + 0.1
    metric = w.abs() * norm.sqrt()[None, :]
    for sparsity in (0.3, 0.55, 0.7):
        assert torch.equal(wanda_mask(w, norm, sparsity, Pattern(), "exact"), _reference_exact(metric, sparsity))
        assert torch.equal(wanda_mask(w, norm, sparsity, Pattern()), _reference_floor(metric, sparsity))
    assert torch.equal(wanda_mask(w, norm, 0.5, Pattern(2, 4), "exact"), wanda_mask(w, norm, 0.5, Pattern(2, 4)))


def test_unknown_rounding_is_rejected() -> None:
    with pytest.raises(BadInputError):
        row_mask(torch.rand(2, 8), 0.5, rounding="nearest")  # type: ignore[arg-type]

"""Error curves of Wanda masks (incremental over levels) and after SparseGPT, against direct products."""

from __future__ import annotations

import pytest
import torch

from lsa_framework.allocators.error_curves import (
    nested_error_curve,
    normalise_curves,
    sparsegpt_error_curve,
    sum_curves,
    wanda_error_curve,
    wanda_levels,
)
from lsa_framework.errors import BadInputError
from lsa_framework.pruners.masks import sparsegpt_prune, wanda_mask
from lsa_framework.types import Pattern

GRIDS = [
    [0.0, 0.1, 0.3, 0.5, 0.7, 0.9],
    [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85],
    [0.013, 0.29, 0.6993, 0.99, 1.0],
]


def _linear(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W, H = 2/n·ΣXᵀX from correlated inputs with uneven channel scales, and Wanda's ‖X_j‖²."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 40, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / cols**0.5)
    x = x * (torch.rand(cols, generator=g) * 3 + 0.1)
    flat = x.reshape(-1, cols)
    gram = 2.0 / 3 * flat.T @ flat
    sq_norm = (flat**2).sum(0) / 3
    return torch.randn(rows, cols, generator=g), gram, sq_norm


def _direct_error(w: torch.Tensor, gram: torch.Tensor, mask: torch.Tensor) -> float:
    delta = w.double() * mask
    return float(torch.trace(delta @ gram.double() @ delta.T))


@pytest.mark.parametrize("rounding", ["floor", "exact"])
@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("shape", [(24, 40), (7, 33)], ids=str)
def test_level_masks_are_wandas(shape: tuple[int, int], grid: list[float], rounding: str) -> None:
    w, _, sq_norm = _linear(*shape, seed=1)
    levels = wanda_levels(w, sq_norm, grid, rounding)  # type: ignore[arg-type]
    for i, s in enumerate(grid):
        assert torch.equal(levels.mask(i), wanda_mask(w, sq_norm, s, Pattern(), rounding))  # type: ignore[arg-type]


@pytest.mark.parametrize("density", [0.0, 1 / 16, 1.0])
@pytest.mark.parametrize("rounding", ["floor", "exact"])
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_curve_equals_direct_computation(grid: list[float], rounding: str, density: float) -> None:
    w, gram, sq_norm = _linear(24, 40, seed=2)
    levels = wanda_levels(w, sq_norm, grid, rounding)  # type: ignore[arg-type]
    curve = nested_error_curve(w, gram, levels, sparse_max_density=density)
    expected = [_direct_error(w, gram, wanda_mask(w, sq_norm, s, Pattern(), rounding)) for s in grid]  # type: ignore[arg-type]
    assert curve.dtype == torch.float64
    assert curve.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-9)


def test_wanda_error_curve_on_ties_is_monotone_and_matches() -> None:
    w, gram, sq_norm = _linear(16, 32, seed=3)
    w = torch.round(w * 2) / 2  # many ties in |W|
    grid = [i / 20 for i in range(21)]
    curve = wanda_error_curve(w, gram, sq_norm, grid, rounding="exact")
    expected = [_direct_error(w, gram, wanda_mask(w, sq_norm, s, Pattern(), "exact")) for s in grid]
    assert curve.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-9)
    assert curve[0] == 0.0
    assert curve[-1] == pytest.approx(float(torch.trace(w.double() @ gram.double() @ w.double().T)))


def test_sparsegpt_curve_equals_direct_computation() -> None:
    w, gram, _ = _linear(12, 32, seed=4)
    grid = [0.2, 0.5, 0.6, 0.7, 0.8]
    curve = sparsegpt_error_curve(w, gram, grid, blocksize=16, max_stack=2)
    for value, s in zip(curve.tolist(), grid, strict=True):
        new_w, _ = sparsegpt_prune(w, gram, s, Pattern(), blocksize=16)
        delta = w.double() - new_w.double()
        assert value == pytest.approx(float(torch.trace(delta @ gram.double() @ delta.T)), rel=1e-9)


def test_sparsegpt_beats_wanda_on_the_layer_error() -> None:
    w, gram, sq_norm = _linear(12, 32, seed=5)
    grid = [0.5, 0.7]
    assert (sparsegpt_error_curve(w, gram, grid, blocksize=16) < wanda_error_curve(w, gram, sq_norm, grid)).all()


def test_normalise_and_sum() -> None:
    curves = {"a": torch.tensor([0.0, 2.0, 6.0]), "b": torch.tensor([1.0, 3.0, 9.0])}
    normalised = normalise_curves(curves, {"a": 2.0, "b": 4.0})
    assert normalised["a"].tolist() == [0.0, 1.0, 3.0]
    assert normalised["b"].tolist() == [0.25, 0.75, 2.25]
    assert sum_curves(curves, {"u": ["a", "b"]})["u"].tolist() == [1.0, 5.0, 15.0]
    with pytest.raises(BadInputError):
        normalise_curves(curves, {"a": 1.0})
    with pytest.raises(BadInputError):
        normalise_curves(curves, {"a": 1.0, "b": 0.0})


def test_bad_grids_are_rejected() -> None:
    w, gram, sq_norm = _linear(4, 8, seed=6)
    for grid in ([], [0.5, 0.5], [0.7, 0.5], [1.2]):
        with pytest.raises(BadInputError):
            wanda_error_curve(w, gram, sq_norm, grid)

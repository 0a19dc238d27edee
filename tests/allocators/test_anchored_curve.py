"""The fast error curve of ``rd``: exact at the anchors, and elsewhere the exact diagonal part plus the
off-diagonal part interpolated between anchors, each checked against a direct computation of the mask."""

from __future__ import annotations

import pytest
import torch

from lsa_framework.allocators.error_curves import anchored_wanda_curve, diagonal_error_curve, wanda_levels
from lsa_framework.errors import BadInputError
from lsa_framework.pruners.masks import wanda_mask
from lsa_framework.types import Pattern


def _problem(out: int, inp: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g)
    X = torch.randn(300, inp, generator=g) * (torch.rand(inp, generator=g) * 3 + 0.1)
    X[:, :3] += 2 * X[:, 3:6]  # correlated channels: a real off-diagonal part
    return W, (2 / 8) * X.T @ X, X.pow(2).sum(0) / 8


def _direct(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(full error, diagonal part) of pruning ``mask``, in float64, from the definition."""
    delta = W.double() * mask
    full = float(torch.trace(delta @ H.double() @ delta.T))
    return full, float((delta.pow(2) * torch.diagonal(H).double()).sum())


@pytest.mark.parametrize("rounding", ["floor", "exact"])
@pytest.mark.parametrize(("out", "inp"), [(24, 40), (9, 17)])
def test_anchored_curve_against_direct_computation(out: int, inp: int, rounding: str) -> None:
    W, H, sq = _problem(out, inp, out + inp)
    levels = [0.0, 0.1, 0.25, 0.3, 0.45, 0.5, 0.62, 0.7, 0.8, 0.9]
    anchors = [0.3, 0.5, 0.7, 0.9]
    curve = anchored_wanda_curve(W, H, sq, levels, anchors, rounding)  # type: ignore[arg-type]
    direct = [_direct(W, H, wanda_mask(W, sq, s, Pattern(), rounding)) for s in levels]  # type: ignore[arg-type]
    off = {0.0: 0.0, **{s: e - d for s, (e, d) in zip(levels, direct, strict=True) if s in anchors}}
    xs = sorted(off)
    for s, (full, diagonal), value in zip(levels, direct, curve.tolist(), strict=True):
        if s in anchors:
            assert value == pytest.approx(full, rel=1e-5, abs=1e-9)
            continue
        upper = next(x for x in xs if x >= s)
        lower = max(x for x in xs if x <= s)
        t = 0.0 if upper == lower else (s - lower) / (upper - lower)
        assert value == pytest.approx(diagonal + off[lower] + t * (off[upper] - off[lower]), rel=1e-5, abs=1e-9)
    assert curve[0] == 0.0


def test_diagonal_part_and_exact_anchors_everywhere() -> None:
    W, H, sq = _problem(16, 32, 3)
    levels = [0.2, 0.4, 0.6]
    found = wanda_levels(W, sq, levels)
    diag = diagonal_error_curve(W, H, found)
    for i, s in enumerate(levels):
        assert float(diag[i]) == pytest.approx(_direct(W, H, wanda_mask(W, sq, s, Pattern()))[1], rel=1e-10)
    every = anchored_wanda_curve(W, H, sq, levels, levels)  # every level an anchor: exact everywhere
    assert every.tolist() == pytest.approx([_direct(W, H, found.mask(i))[0] for i in range(3)], rel=1e-5)


def test_anchors_must_lie_on_the_grid_and_reach_its_top() -> None:
    W, H, sq = _problem(4, 8, 0)
    with pytest.raises(BadInputError):
        anchored_wanda_curve(W, H, sq, [0.2, 0.5, 0.8], [0.5])
    with pytest.raises(BadInputError):
        anchored_wanda_curve(W, H, sq, [0.2, 0.5, 0.8], [0.4, 0.8])

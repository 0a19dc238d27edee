"""The scoring functions against direct computations of the papers' definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lsa_framework.scorers import functions
from lsa_framework.scorers.functions import (
    dlp_score,
    lse_error,
    lse_error_and_mask,
    outlier_ratio,
    wanda_metric,
)


def correlated_gram(cols: int, seed: int, tokens: int = 256) -> torch.Tensor:
    """H = (2/n) XᵀX for inputs with correlated channels and uneven scales."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scale = torch.rand(cols, generator=g) * 3 + 0.1
    x = torch.randn(tokens, cols, generator=g) @ mix * scale
    return 2.0 / tokens * x.T @ x


def mask_error(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor) -> float:
    """Σ_k W_k[P_k] H[P_k, P_k] W_k[P_k]ᵀ, row by row, in float64."""
    W64, H64 = W.double(), H.double()
    total = 0.0
    for k in range(W.shape[0]):
        p = mask[k].nonzero().flatten()
        w = W64[k, p]
        total += float(w @ H64[p][:, p] @ w)
    return total


def masked_output_error(W: torch.Tensor, X: torch.Tensor, mask: torch.Tensor) -> float:
    """‖W Xᵀ − (M⊙W) Xᵀ‖_F² (M keeps the unpruned weights)."""
    removed = (W * mask).double()
    return float(((removed @ X.double().T) ** 2).sum())


@pytest.mark.parametrize(
    ("rows", "cols", "group"),
    [(12, 48, 0), (12, 48, 16), (10, 40, 16), (7, 37, 16), (5, 20, 128)],
)
@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_lse_error_is_the_quadratic_error_of_its_mask(rows: int, cols: int, group: int, ratio: float) -> None:
    torch.manual_seed(rows * cols + group)
    W = torch.randn(rows, cols)
    H = correlated_gram(cols, seed=cols)
    error, mask = lse_error_and_mask(W, H, group_size=group, ratio=ratio)
    assert mask.shape == W.shape and mask.dtype == torch.bool
    assert error == pytest.approx(mask_error(W, H, mask), rel=1e-4)
    assert lse_error(W, H, group, ratio) == error
    block = cols if group == 0 else group
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        # every row loses exactly int(len·ratio) entries of every group, the short last one included
        assert (mask[:, i1:i2].sum(dim=1) == int((i2 - i1) * ratio)).all()


def test_lse_error_equals_output_error_with_the_gram_of_the_inputs() -> None:
    torch.manual_seed(0)
    X = torch.randn(64, 24) @ (torch.randn(24, 24) * 0.3 + torch.eye(24))
    W = torch.randn(6, 24)
    H = X.T @ X
    error, mask = lse_error_and_mask(W, H, group_size=8)
    assert error == pytest.approx(masked_output_error(W, X, mask), rel=1e-4)


def greedy_transcription(W: torch.Tensor, H: torch.Tensor, group_size: int, ratio: float) -> tuple[float, torch.Tensor]:
    """LSA's greedy search written out row by row and step by step, float32 like the reference.

    The score update keeps the reference's order of float32 operations, ((W·H_j)·2w) then +, so the
    scores, hence the argmins, must match the vectorised search bit for bit. The cross-terms of a
    group use the same matrix product as the implementation: a row-by-row product may round
    differently, which would test the BLAS, not the search.
    """
    rows, cols = W.shape
    block = cols if group_size == 0 else group_size
    score = W * W * torch.diagonal(H)[None, :]
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    total = 0.0
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        removed = torch.zeros(rows, i2 - i1)
        for k in range(rows):
            s, w = score[k, i1:i2].clone(), W[k, i1:i2]
            for _ in range(int((i2 - i1) * ratio)):
                j = int(torch.argmin(s))  # the first of equal minima
                total += float(s[j])
                s = s + w * H[i1 + j, i1:i2] * (2.0 * w[j])
                s[j] = torch.inf
                removed[k, j] = w[j]
                mask[k, i1 + j] = True
        if i2 < cols:
            score[:, i2:] += W[:, i2:] * (removed @ H[i1:i2, i2:]) * 2.0
    return total, mask


# 24 elements split 8 rows of a group of 8 into blocks of 3, 3 and 2 rows (the default keeps one block)
BLOCK_ELEMENTS = [functions._CPU_BLOCK_ELEMENTS, 24]


@pytest.mark.parametrize("block_elements", BLOCK_ELEMENTS)
@pytest.mark.parametrize(
    ("rows", "cols", "group"),
    [(8, 32, 8), (8, 32, 0), (8, 40, 16), (9, 37, 16)],
)
@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_lse_error_and_mask_match_the_step_by_step_search(
    rows: int, cols: int, group: int, ratio: float, block_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(functions, "_CPU_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(7 * rows + cols + group)
    W = torch.randn(rows, cols)
    H = correlated_gram(cols, seed=cols + 1)
    expected_error, expected_mask = greedy_transcription(W, H, group, ratio)
    error, mask = lse_error_and_mask(W, H, group_size=group, ratio=ratio)
    assert torch.equal(mask, expected_mask)
    # both sum the same float32 ε in float64, in another order: far closer than the contract's 1e-6,
    # and close enough to notice a float32 rounding change in the score update
    assert error == pytest.approx(expected_error, rel=1e-12)


@pytest.mark.parametrize("block_elements", BLOCK_ELEMENTS)
def test_equal_scores_resolve_to_the_first_column(block_elements: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small integers make many scores exactly equal (and some ±0): ties go to the lowest column."""
    monkeypatch.setattr(functions, "_CPU_BLOCK_ELEMENTS", block_elements)
    g = torch.Generator().manual_seed(11)
    W = torch.randint(-2, 3, (8, 40), generator=g).float()
    W[0, :8] = -0.0
    H = torch.eye(40) * 2 + torch.randint(0, 2, (40, 40), generator=g).float().triu(1)
    H = H + H.triu(1).T
    for group, ratio in [(8, 0.5), (16, 0.25), (0, 0.5)]:
        expected_error, expected_mask = greedy_transcription(W, H, group, ratio)
        error, mask = lse_error_and_mask(W, H, group_size=group, ratio=ratio)
        assert torch.equal(mask, expected_mask)
        assert error == pytest.approx(expected_error, rel=1e-6)
    # with H = I no removal changes another score, so equal |W| pick the first columns
    error, mask = lse_error_and_mask(torch.ones(3, 16), torch.eye(16), group_size=8)
    assert error == 24.0 and mask[:, :4].all() and mask[:, 8:12].all() and int(mask.sum()) == 24


@pytest.mark.parametrize("block_elements", BLOCK_ELEMENTS)
def test_non_finite_scores_follow_the_step_by_step_search(block_elements: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN or infinite weight leaves the fast argmin; those rows are searched again exactly."""
    monkeypatch.setattr(functions, "_CPU_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(12)
    W = torch.randn(8, 24)
    W[1, 3] = torch.nan
    W[5, 17] = torch.inf
    H = correlated_gram(24, seed=12)
    expected_error, expected_mask = greedy_transcription(W, H, 8, 0.5)
    error, mask = lse_error_and_mask(W, H, group_size=8)
    assert torch.equal(mask, expected_mask)
    assert math.isnan(error) and math.isnan(expected_error)


def wanda_mask(W: torch.Tensor, H: torch.Tensor, count: int) -> torch.Tensor:
    metric = W.abs() * torch.diagonal(H).sqrt()[None, :]
    idx = torch.argsort(metric, dim=1, stable=True)[:, :count]
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 6, 7])
def test_greedy_beats_the_wanda_mask_of_the_same_size(seed: int) -> None:
    torch.manual_seed(100 + seed)
    W = torch.randn(8, 16)
    H = correlated_gram(16, seed=seed)
    error = lse_error(W, H, group_size=0)
    assert error <= mask_error(W, H, wanda_mask(W, H, 8)) * (1 + 1e-6)


def brute_force_row(w: torch.Tensor, H: torch.Tensor, count: int) -> float:
    w64, H64 = w.double(), H.double()
    best = float("inf")
    for p in itertools.combinations(range(w.numel()), count):
        idx = torch.tensor(p)
        best = min(best, float(w64[idx] @ H64[idx][:, idx] @ w64[idx]))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_is_no_better_than_the_optimum(seed: int) -> None:
    torch.manual_seed(seed)
    W = torch.randn(3, 8)
    H = correlated_gram(8, seed=seed)
    for k in range(3):
        greedy = lse_error(W[k : k + 1], H, group_size=0)
        assert greedy >= brute_force_row(W[k], H, 4) * (1 - 1e-5)


def test_greedy_is_optimal_for_a_diagonal_gram() -> None:
    torch.manual_seed(1)
    W = torch.randn(4, 8)
    H = torch.diag(torch.rand(8) * 2 + 0.1)
    for k in range(4):
        greedy = lse_error(W[k : k + 1], H, group_size=0)
        assert greedy == pytest.approx(brute_force_row(W[k], H, 4), rel=1e-5)


def test_lse_error_rejects_bad_arguments() -> None:
    W, H = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(ValueError):
        lse_error(W, torch.eye(7))
    with pytest.raises(ValueError):
        lse_error(W, H, group_size=-1)
    with pytest.raises(ValueError):
        lse_error(W, H, ratio=1.0)


def test_lse_error_accepts_half_precision_weights_and_leaves_them_alone() -> None:
    torch.manual_seed(2)
    W = torch.randn(6, 16).to(torch.bfloat16)
    before = W.clone()
    H = correlated_gram(16, seed=2)
    error, mask = lse_error_and_mask(W, H, group_size=8)
    assert torch.equal(W, before)
    assert error == pytest.approx(mask_error(W.float(), H, mask), rel=1e-4)


def test_wanda_metric() -> None:
    torch.manual_seed(3)
    W, norm = torch.randn(5, 7), torch.rand(7)
    expected = np.abs(W.numpy()) * np.sqrt(norm.numpy())[None, :]
    np.testing.assert_allclose(wanda_metric(W, norm).numpy(), expected, rtol=1e-6)


def test_outlier_ratio_counts_entries_above_m_times_the_mean() -> None:
    torch.manual_seed(4)
    metrics = [torch.rand(6, 10) ** 4, torch.rand(3, 10) ** 6, torch.rand(10, 4)]
    flat = np.concatenate([m.numpy().ravel() for m in metrics]).astype(np.float64)
    for M in (1.0, 2.0, 5.0):
        expected = 100.0 * np.count_nonzero(flat > M * flat.mean()) / flat.size
        assert outlier_ratio(metrics, M) == pytest.approx(expected)
    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 100.0])], M=2.0) == 25.0


def test_dlp_score_is_the_lower_median_or_the_mean() -> None:
    metrics = [torch.tensor([[4.0, 1.0], [3.0, 10.0]]), torch.tensor([2.0, 7.0])]
    # six values 1 2 3 4 7 10: torch.median (as in the references) takes the lower middle one, 3
    assert dlp_score(metrics, "median") == 3.0
    assert dlp_score(metrics, "mean") == pytest.approx(27.0 / 6)
    torch.manual_seed(5)
    many = [torch.randn(7, 9), torch.randn(4, 9)]
    flat = np.sort(np.concatenate([m.numpy().ravel() for m in many]))
    assert dlp_score(many) == pytest.approx(abs(flat[(flat.size - 1) // 2]))
    assert dlp_score(many, "mean") == pytest.approx(abs(flat.mean()), rel=1e-5)
    with pytest.raises(ValueError):
        dlp_score(many, "max")  # type: ignore[arg-type]

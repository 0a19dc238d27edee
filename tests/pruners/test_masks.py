"""The mask functions and the SparseGPT update, each checked against a few lines of plain torch."""

from __future__ import annotations

import pytest
import torch

from lsa_framework.errors import BadInputError
from lsa_framework.pruners.masks import (
    magnitude_mask,
    matrix_mask,
    nm_mask,
    row_mask,
    sparsegpt_prune,
    wanda_mask,
)
from lsa_framework.types import Pattern

UNSTRUCTURED = Pattern()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated_inputs(tokens: int, in_features: int, seed: int) -> torch.Tensor:
    """X = Z·A with a random mixing A and uneven channel scales, so inputs are strongly correlated."""
    g = _gen(seed)
    z = torch.randn(tokens, in_features, generator=g)
    a = torch.randn(in_features, in_features, generator=g) / in_features**0.5
    scales = torch.rand(in_features, generator=g) * 3 + 0.1
    return (z @ a + 0.3 * z) * scales


def _output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.norm(w @ x.T - w_hat @ x.T))


def _zeros_per_group(w: torch.Tensor, m: int) -> torch.Tensor:
    return (w == 0).reshape(w.shape[0], w.shape[1] // m, m).sum(-1)


# --- Wanda -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77])
def test_wanda_unstructured_is_per_row_bottom_k(sparsity: float) -> None:
    g = _gen(0)
    w = torch.randn(16, 48, generator=g)
    norm = torch.rand(48, generator=g) * 10
    mask = wanda_mask(w, norm, sparsity, UNSTRUCTURED)

    k = int(48 * sparsity)
    score = w.abs() * norm.sqrt()
    expected = torch.zeros(16, 48, dtype=torch.bool)
    for r in range(16):
        for j in score[r].argsort()[:k].tolist():
            expected[r, j] = True
    assert torch.equal(mask, expected)
    assert mask.sum(1).tolist() == [k] * 16


def test_row_mask_stable_on_ties() -> None:
    metric = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
    # stable sort: the first of equal values goes first
    assert row_mask(metric, 0.5).tolist() == [[False, True, False, True, False, True]]
    assert row_mask(metric, 4 / 6).tolist() == [[True, True, False, True, False, True]]


def test_wanda_does_not_mutate_inputs() -> None:
    g = _gen(1)
    w, norm = torch.randn(4, 8, generator=g), torch.rand(8, generator=g)
    w0, norm0 = w.clone(), norm.clone()
    wanda_mask(w, norm, 0.5, UNSTRUCTURED)
    assert torch.equal(w, w0)
    assert torch.equal(norm, norm0)


# --- magnitude ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9])
def test_magnitude_one_threshold_per_matrix(sparsity: float) -> None:
    w = torch.randn(24, 40, generator=_gen(2))
    mask = magnitude_mask(w, sparsity, UNSTRUCTURED)
    assert int(mask.sum()) == int(w.numel() * sparsity)
    if 0 < mask.sum() < mask.numel():
        assert w.abs()[mask].max() <= w.abs()[~mask].min()


def test_matrix_mask_counts_exact_with_ties() -> None:
    metric = torch.zeros(3, 5)  # everything ties: the reference's `<= thresh` would prune all
    assert int(matrix_mask(metric, 0.4).sum()) == 6


# --- N:M ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_nm_mask_picks_n_smallest_of_each_group(n: int, m: int) -> None:
    metric = torch.randn(8, 32, generator=_gen(3))
    mask = nm_mask(metric, n, m)
    groups = metric.reshape(8, 32 // m, m)
    gmask = mask.reshape(8, 32 // m, m)
    assert (gmask.sum(-1) == n).all()
    for r in range(8):
        for c in range(32 // m):
            assert groups[r, c][gmask[r, c]].max() < groups[r, c][~gmask[r, c]].min()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_nm_magnitude_wanda_sparsegpt_exact_n_per_group(n: int, m: int) -> None:
    g = _gen(4)
    w = torch.randn(32, 64, generator=g)
    x = _correlated_inputs(256, 64, seed=5)
    norm = (x**2).sum(0)
    gram = 2 / 256 * x.T @ x
    pattern = Pattern(n, m)
    # `sparsity` is ignored under N:M
    for mask in (magnitude_mask(w, 0.9, pattern), wanda_mask(w, norm, 0.1, pattern)):
        assert (mask.reshape(32, 64 // m, m).sum(-1) == n).all()
        assert (_zeros_per_group(w.masked_fill(mask, 0), m) == n).all()
    new_w, mask = sparsegpt_prune(w, gram, 0.9, pattern)
    assert (mask.reshape(32, 64 // m, m).sum(-1) == n).all()
    assert (_zeros_per_group(new_w, m) == n).all()


@pytest.mark.parametrize("m", [4, 8])
def test_bad_nm_raises(m: int) -> None:
    w = torch.randn(4, 10)
    pattern = Pattern(m // 2, m)
    with pytest.raises(BadInputError, match="divisible"):
        magnitude_mask(w, 0.5, pattern)
    with pytest.raises(BadInputError, match="divisible"):
        wanda_mask(w, torch.ones(10), 0.5, pattern)
    with pytest.raises(BadInputError, match="divisible"):
        sparsegpt_prune(w, torch.eye(10), 0.5, pattern)


def test_impossible_pattern_and_sparsity_raise() -> None:
    with pytest.raises(BadInputError):
        nm_mask(torch.randn(2, 8), 4, 4)
    with pytest.raises(BadInputError):
        row_mask(torch.randn(2, 8), 1.5)
    with pytest.raises(BadInputError):
        sparsegpt_prune(torch.randn(2, 8), torch.eye(8), 0.5, Pattern(2, 4), blocksize=6)


# --- SparseGPT ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
def test_sparsegpt_beats_wanda_on_output_error(pattern: Pattern) -> None:
    in_features, out_features, tokens = 96, 32, 256
    x = _correlated_inputs(tokens, in_features, seed=6)
    w = torch.randn(out_features, in_features, generator=_gen(7))
    gram = 2 / tokens * x.T @ x
    norm = (x**2).sum(0)

    wanda_w = w.masked_fill(wanda_mask(w, norm, 0.5, pattern), 0)
    sgpt_w, mask = sparsegpt_prune(w, gram, 0.5, pattern)

    assert torch.isfinite(sgpt_w).all()
    assert torch.equal(sgpt_w == 0, mask)
    assert int((sgpt_w == 0).sum()) == int(w.numel() * 0.5)
    assert _output_error(w, sgpt_w, x) < _output_error(w, wanda_w, x)


@pytest.mark.parametrize("sparsity", [0.5, 0.37])
def test_sparsegpt_exact_count_per_block(sparsity: float) -> None:
    x = _correlated_inputs(256, 256, seed=8)
    w = torch.randn(32, 256, generator=_gen(9))
    gram = 2 / 256 * x.T @ x
    new_w, _ = sparsegpt_prune(w, gram, sparsity, UNSTRUCTURED, blocksize=128)
    expected = int(32 * 128 * sparsity)
    assert int((new_w[:, :128] == 0).sum()) == expected
    assert int((new_w[:, 128:] == 0).sum()) == expected


def test_sparsegpt_with_diagonal_hessian_is_blockwise_weighted_magnitude() -> None:
    # H diagonal → Hinv = diag(1/sqrt(h)), no cross terms: no update, mask = k smallest w²·h per block.
    g = _gen(10)
    w = torch.randn(8, 64, generator=g)
    h = torch.rand(64, generator=g) + 0.5
    new_w, mask = sparsegpt_prune(w, torch.diag(h), 0.5, UNSTRUCTURED, blocksize=32, percdamp=0.0)
    score = w**2 * h
    for b in range(2):
        cols = slice(32 * b, 32 * (b + 1))
        block_score, block_mask = score[:, cols], mask[:, cols]
        assert int(block_mask.sum()) == 8 * 32 // 2
        assert block_score[block_mask].max() < block_score[~block_mask].min()
    assert torch.allclose(new_w[~mask], w[~mask])
    assert (new_w[mask] == 0).all()


def test_sparsegpt_dead_column() -> None:
    x = _correlated_inputs(256, 64, seed=11)
    x[:, 5] = 0  # input channel 5 is always zero
    w = torch.randn(32, 64, generator=_gen(12))
    gram = 2 / 256 * x.T @ x
    gram0, w0 = gram.clone(), w.clone()
    for pattern in (UNSTRUCTURED, Pattern(2, 4)):
        new_w, mask = sparsegpt_prune(w, gram, 0.5, pattern)
        assert torch.isfinite(new_w).all()
        assert (new_w[:, 5] == 0).all()
        assert mask[:, 5].all()
        assert torch.equal(new_w == 0, mask)
    assert torch.equal(gram, gram0)  # inputs untouched
    assert torch.equal(w, w0)


def test_sparsegpt_keeps_dtype() -> None:
    x = _correlated_inputs(64, 32, seed=13)
    w = torch.randn(8, 32, generator=_gen(14)).to(torch.bfloat16)
    new_w, mask = sparsegpt_prune(w, 2 / 64 * x.T @ x, 0.5, UNSTRUCTURED)
    assert new_w.dtype == torch.bfloat16
    assert mask.dtype == torch.bool
    assert (new_w[mask] == 0).all()


def test_sparsegpt_failed_cholesky_says_percdamp() -> None:
    with pytest.raises(BadInputError, match="percdamp"):
        sparsegpt_prune(torch.randn(4, 8), -torch.eye(8), 0.5, UNSTRUCTURED)


# --- ties --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_ties_give_exact_counts(sparsity: float) -> None:
    w = torch.randn(16, 128, generator=_gen(15)).round(decimals=1)
    assert len(w.abs().unique()) < w.numel() // 10  # many equal values
    ones = torch.ones(128)

    mag = magnitude_mask(w, sparsity, UNSTRUCTURED)
    assert int(mag.sum()) == int(w.numel() * sparsity)

    wan = wanda_mask(w, ones, sparsity, UNSTRUCTURED)
    assert wan.sum(1).tolist() == [int(128 * sparsity)] * 16

    # identity Hessian: every block metric ties exactly like |W|
    _, sgpt = sparsegpt_prune(w, torch.eye(128), sparsity, UNSTRUCTURED, blocksize=64)
    for cols in (slice(0, 64), slice(64, 128)):
        assert int(sgpt[:, cols].sum()) == int(16 * 64 * sparsity)
    assert int(sgpt.sum()) == 2 * int(16 * 64 * sparsity)

    for n, m in ((2, 4), (4, 8)):
        for mask in (
            magnitude_mask(w, sparsity, Pattern(n, m)),
            wanda_mask(w, ones, sparsity, Pattern(n, m)),
            sparsegpt_prune(w, torch.eye(128), sparsity, Pattern(n, m))[1],
        ):
            assert (mask.reshape(16, 128 // m, m).sum(-1) == n).all()


# --- exact selection == the stable-sort convention -----------------------------------------------
# The mask functions select without full sorts (kthvalue, rank counting); these check them against
# the convention itself, written as a plain stable sort, on many shapes, ties and special values.

SPECIAL = torch.tensor([float("-inf"), -1.0, -0.0, 0.0, 1.0, float("inf")])


def _stable_sort_reference(metric: torch.Tensor, k: int) -> torch.Tensor:
    """Along the last dim, the first ``k`` of a stable ascending sort (NaN last), as a mask."""
    order = torch.sort(metric, dim=-1, stable=True).indices[..., :k]
    return torch.zeros(metric.shape, dtype=torch.bool).scatter_(-1, order, True)


def _metric(kind: str, shape: tuple[int, int], seed: int) -> torch.Tensor:
    g = _gen(seed)
    if kind == "distinct":
        return torch.rand(shape, generator=g)
    if kind == "ties":
        return torch.randint(0, 4, shape, generator=g).float()
    if kind == "special":  # ±inf and ±0 (a sort treats -0.0 and 0.0 as equal)
        return SPECIAL[torch.randint(0, len(SPECIAL), shape, generator=g)]
    assert kind == "nan"
    metric = torch.randint(0, 4, shape, generator=g).float()
    metric[torch.rand(shape, generator=g) < 0.2] = float("nan")
    return metric


KINDS = ["distinct", "ties", "special", "nan"]
SHAPES = [(1, 16), (1, 48), (3, 16), (9, 48), (32, 64)]
SPARSITIES = [0.0, 0.02, 0.25, 0.5, 0.77, 0.99, 1.0]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_row_mask_equals_stable_sort(kind: str, shape: tuple[int, int]) -> None:
    for seed, sparsity in enumerate(SPARSITIES):
        metric = _metric(kind, shape, seed)
        k = int(shape[1] * sparsity)
        mask = row_mask(metric, sparsity)
        assert torch.equal(mask, _stable_sort_reference(metric, k)), (seed, sparsity)
        assert mask.sum(1).tolist() == [k] * shape[0]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_matrix_mask_equals_stable_sort(kind: str, shape: tuple[int, int]) -> None:
    for seed, sparsity in enumerate(SPARSITIES):
        metric = _metric(kind, shape, seed)
        k = int(metric.numel() * sparsity)
        mask = matrix_mask(metric, sparsity)
        assert torch.equal(mask, _stable_sort_reference(metric.flatten(), k).reshape(shape)), (seed, sparsity)
        assert int(mask.sum()) == k


@pytest.mark.parametrize("shape", [(1, 64), (5, 64), (33, 128)], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_nm_mask_equals_stable_sort(kind: str, shape: tuple[int, int]) -> None:
    rows, cols = shape
    for seed, (n, m) in enumerate([(1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (7, 8), (8, 16), (16, 32)]):
        metric = _metric(kind, shape, seed)
        mask = nm_mask(metric, n, m)
        expected = _stable_sort_reference(metric.reshape(rows, cols // m, m), n).reshape(shape)
        assert torch.equal(mask, expected), (seed, n, m)
        assert (mask.reshape(rows, cols // m, m).sum(-1) == n).all()


def test_masks_at_zero_and_full_sparsity() -> None:
    metric = _metric("ties", (4, 16), seed=16)
    for fn in (row_mask, matrix_mask):
        assert not fn(metric, 0.0).any()
        assert fn(metric, 1.0).all()


def test_one_row_all_equal_prunes_leading_positions() -> None:
    metric = torch.full((1, 10), 3.0)
    assert row_mask(metric, 0.3).tolist() == [[True] * 3 + [False] * 7]
    assert matrix_mask(metric, 0.3).tolist() == [[True] * 3 + [False] * 7]
    assert nm_mask(metric, 2, 5).tolist() == [[True, True, False, False, False] * 2]


@pytest.mark.parametrize("kind", ["distinct", "ties"])
def test_sparsegpt_block_mask_equals_stable_sort(kind: str) -> None:
    # Identity H and no damping: Hinv = I, so no weight moves and the mask of every block is exactly
    # the k smallest w² of the block in stable (row-major) order.
    w = _metric(kind, (12, 48), seed=17) - 1.5
    _, mask = sparsegpt_prune(w, torch.eye(48), 0.4, UNSTRUCTURED, blocksize=16, percdamp=0.0)
    k = int(12 * 16 * 0.4)
    for b in range(3):
        block = (w[:, 16 * b : 16 * (b + 1)] ** 2).flatten()
        expected = _stable_sort_reference(block, k).reshape(12, 16)
        assert torch.equal(mask[:, 16 * b : 16 * (b + 1)], expected)

"""SparseGPT for a group of linears sharing one input: the same masks as pruning each alone.

Also pins the single-linear SparseGPT, whose loop and mask selection were reworked for speed, to the
straightforward algorithm (full stable sorts, column-major loop) written out here.
"""

from __future__ import annotations

import pytest
import torch

from lsa_framework.errors import BadInputError
from lsa_framework.pruners.masks import sparsegpt_prune, sparsegpt_prune_stacked
from lsa_framework.pruners.sparsegpt import SparseGPTPruner
from lsa_framework.types import LinearStats, Pattern

IN = 64
ROWS = (64, 16, 16)
SPARSITIES = (0.5, 0.3, 0.7)
BLOCKSIZE = 16
PATTERNS = [Pattern(), Pattern(2, 4), Pattern(4, 8)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gram(seed: int, dead: tuple[int, ...] = ()) -> torch.Tensor:
    """H = 2/n·XᵀX of strongly correlated inputs with uneven scales (a random SPD matrix)."""
    g = _gen(seed)
    z = torch.randn(256, IN, generator=g)
    x = (z @ (torch.randn(IN, IN, generator=g) / IN**0.5) + 0.3 * z) * (torch.rand(IN, generator=g) * 3 + 0.1)
    x[:, list(dead)] = 0
    return 2 / 256 * x.T @ x


def _weights(seed: int, ties: bool = False) -> list[torch.Tensor]:
    g = _gen(seed)
    weights = [torch.randn(rows, IN, generator=g) for rows in ROWS]
    return [w.round(decimals=1) for w in weights] if ties else weights


def _reference_sparsegpt(
    weight: torch.Tensor, gram: torch.Tensor, sparsity: float, pattern: Pattern, blocksize: int, percdamp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT as first written here (``fasterprune`` with exact counts by full stable sorts)."""
    W, H = weight.clone().float(), gram.clone().float()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        d1 = torch.diag(Hinv1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if not pattern.is_nm:
            k = int(W1.numel() * sparsity)
            order = torch.sort((W1**2 / d1[None, :] ** 2).flatten(), stable=True).indices
            mask1.view(-1)[order[:k]] = True
        for i in range(i2 - i1):
            if pattern.is_nm and i % pattern.m == 0:
                tmp = W1[:, i : i + pattern.m] ** 2 / d1[None, i : i + pattern.m] ** 2
                mask1.scatter_(1, i + torch.sort(tmp, dim=1, stable=True).indices[:, : pattern.n], True)
            w = W1[:, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    mask[:, dead] = True
    W[mask] = 0
    return W, mask


def _assert_same(got: tuple[torch.Tensor, torch.Tensor], expected: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert torch.equal(got[1], expected[1])
    assert torch.allclose(got[0].float(), expected[0].float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_single_sparsegpt_matches_reference(pattern: Pattern, ties: bool) -> None:
    gram = _gram(0, dead=(5,))
    for weight, sparsity in zip(_weights(1, ties), SPARSITIES, strict=True):
        expected = _reference_sparsegpt(weight, gram, sparsity, pattern, BLOCKSIZE)
        _assert_same(sparsegpt_prune(weight, gram, sparsity, pattern, blocksize=BLOCKSIZE), expected)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_stacked_equals_separate(pattern: Pattern, ties: bool) -> None:
    gram, weights = _gram(2), _weights(3, ties)
    stacked = sparsegpt_prune_stacked(weights, gram, SPARSITIES, pattern, blocksize=BLOCKSIZE)
    assert len(stacked) == len(weights)
    for weight, sparsity, got in zip(weights, SPARSITIES, stacked, strict=True):
        assert got[0].shape == got[1].shape == weight.shape
        _assert_same(got, sparsegpt_prune(weight, gram, sparsity, pattern, blocksize=BLOCKSIZE))


def test_stacked_block_threshold_is_per_linear() -> None:
    # Identity H: every block of each linear prunes exactly int(rows·blocksize·s) of its own weights,
    # although the stacked block holds the rows of all three.
    weights = _weights(4, ties=True)
    stacked = sparsegpt_prune_stacked(weights, torch.eye(IN), SPARSITIES, Pattern(), blocksize=BLOCKSIZE)
    for rows, sparsity, (_, mask) in zip(ROWS, SPARSITIES, stacked, strict=True):
        per_block = mask.reshape(rows, IN // BLOCKSIZE, BLOCKSIZE).sum(dim=(0, 2))
        assert per_block.tolist() == [int(rows * BLOCKSIZE * sparsity)] * (IN // BLOCKSIZE)


def test_stacked_dead_column_and_inputs_untouched() -> None:
    gram, weights = _gram(5, dead=(0, 17)), _weights(6)
    gram0, weights0 = gram.clone(), [w.clone() for w in weights]
    for new_w, mask in sparsegpt_prune_stacked(weights, gram, SPARSITIES, Pattern(2, 4), blocksize=BLOCKSIZE):
        assert mask[:, [0, 17]].all()
        assert torch.equal(new_w == 0, mask)
    assert torch.equal(gram, gram0)
    assert all(torch.equal(w, w0) for w, w0 in zip(weights, weights0, strict=True))


def test_stacked_keeps_each_dtype() -> None:
    weights = _weights(7)
    weights[1] = weights[1].to(torch.bfloat16)
    stacked = sparsegpt_prune_stacked(weights, _gram(8), SPARSITIES, Pattern(), blocksize=BLOCKSIZE)
    assert [w.dtype for w, _ in stacked] == [torch.float32, torch.bfloat16, torch.float32]
    _assert_same(stacked[1], sparsegpt_prune(weights[1], _gram(8), SPARSITIES[1], Pattern(), blocksize=BLOCKSIZE))


def test_stacked_bad_groups_raise() -> None:
    gram, weights = _gram(9), _weights(10)
    with pytest.raises(BadInputError, match="one sparsity per weight"):
        sparsegpt_prune_stacked(weights, gram, [0.5], Pattern())
    with pytest.raises(BadInputError, match="one sparsity per weight"):
        sparsegpt_prune_stacked([], gram, [], Pattern())
    with pytest.raises(BadInputError, match="input sizes differ"):
        sparsegpt_prune_stacked([weights[0], torch.randn(4, 32)], gram, [0.5, 0.5], Pattern())
    with pytest.raises(BadInputError, match="Sparsity"):
        sparsegpt_prune_stacked(weights, gram, [0.5, 1.5, 0.5], Pattern())


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
def test_plugin_prune_group_equals_prune(pattern: Pattern) -> None:
    pruner = SparseGPTPruner(SparseGPTPruner.Options(blocksize=BLOCKSIZE))
    stats = LinearStats(nsamples=1, ntokens=256, gram=_gram(11))

    def linears() -> list[torch.nn.Linear]:
        out = []
        for weight in _weights(12):
            linear = torch.nn.Linear(IN, weight.shape[0], bias=False)
            with torch.no_grad():
                linear.weight.copy_(weight)
            out.append(linear)
        return out

    group, alone = linears(), linears()
    masks = pruner.prune_group(group, stats, list(SPARSITIES), pattern)
    for linear, single, sparsity, mask in zip(group, alone, SPARSITIES, masks, strict=True):
        expected_mask = pruner.prune(single, stats, sparsity, pattern)
        _assert_same((linear.weight.detach(), mask), (single.weight.detach(), expected_mask))
        assert torch.equal(linear.weight.detach() == 0, mask)

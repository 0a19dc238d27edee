"""The per-projection mask and update code of the original Wanda and SparseGPT scripts, transcribed.

Used by :mod:`reference_prune` so that the reference is timed with the originals' own arithmetic,
not with the framework's (which selects without full sorts and runs SparseGPT once per input group).

- :func:`wanda_mask_reference` — locuslab/wanda ``lib/prune.py``, ``prune_wanda``: the metric
  |W|·sqrt(scaler_row), a full stable sort of every row, the first int(in·s) indices scattered into
  the mask; for N:M, ``torch.topk(largest=False)`` on every group of M columns.
- :func:`sparsegpt_reference` — IST-DASLab/sparsegpt ``sparsegpt.py``, ``SparseGPT.fasterprune``:
  dead columns, damping, Cholesky factor of H⁻¹, blocks of 128 columns, the block mask from a full
  sort of w²/diag(Hinv₁)², the column loop with the error propagated inside the block and the lazy
  update after it.

One deliberate difference, shared with the framework so that masks can be compared: the originals'
``metric <= sort(metric)[k]`` prunes k + 1 weights (more on ties), so both here and in the framework
exactly the first k of a stable sort are pruned. N:M uses a stable sort for the same reason.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsa_framework.types import Pattern


def wanda_mask_reference(weight: Tensor, scaler_row: Tensor, sparsity: float, pattern: Pattern) -> Tensor:
    metric = weight.float().abs() * torch.sqrt(scaler_row.reshape((1, -1)))
    mask = torch.zeros_like(metric, dtype=torch.bool)
    if pattern.is_nm:
        for ii in range(metric.shape[1]):
            if ii % pattern.m == 0:
                tmp = metric[:, ii : ii + pattern.m].float()
                idx = torch.sort(tmp, dim=1, stable=True)[1][:, : pattern.n]
                mask.scatter_(1, ii + idx, True)
        return mask
    indices = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * sparsity)]
    mask.scatter_(1, indices, True)
    return mask


@torch.no_grad()
def sparsegpt_reference(
    weight: Tensor, H: Tensor, sparsity: float, pattern: Pattern, blocksize: int = 128, percdamp: float = 0.01
) -> tuple[Tensor, Tensor]:
    """``fasterprune`` on one projection; returns (new weight in ``weight``'s dtype, mask of zeros)."""
    W = weight.clone().float()
    H = H.clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns, device=W.device)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H

    full_mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]

        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if not pattern.is_nm:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            k = int(tmp.numel() * sparsity)
            order = torch.sort(tmp.flatten(), stable=True)[1]
            mask1.view(-1)[order[:k]] = True

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if pattern.is_nm and i % pattern.m == 0:
                tmp = W1[:, i : (i + pattern.m)] ** 2 / (torch.diag(Hinv1)[i : (i + pattern.m)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.sort(tmp, dim=1, stable=True)[1][:, : pattern.n], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1

        W[:, i1:i2] = Q1
        full_mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    full_mask[:, dead] = True
    W[full_mask] = 0
    return W.to(weight.dtype), full_mask

"""The scoring functions of LSA, OWL and DLP as pure tensor functions (float32, no model).

Names follow the papers: :func:`lse_error` is LSA's linear reconstruction error of the greedy 50%
mask (the official ``blk_s``), :func:`wanda_metric` is Wanda's |W|·‖X_j‖₂, :func:`outlier_ratio` is
OWL's layer-wise outlier distribution (LOD) and :func:`dlp_score` is DLP's layer statistic.

Where we differ from the reference code on purpose:

* ``lse_error``: a last column group shorter than ``group_size`` prunes ``int(len·ratio)`` entries of
  each row. The reference computes ``int(group_size·ratio)`` once, so a short last group loses more
  than ``ratio`` of its entries (all of them when it is at most half a group, e.g. the last 64
  columns of a 576-wide matrix with group 128), and when it is shorter than that count the
  reference adds +inf to E.
* ``lse_error`` sums E in float64 (the reference sums float32 step totals); the greedy search itself
  is float32 as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch


def _as_float32(t: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    return t.detach().to(device=device if device is not None else t.device, dtype=torch.float32)


@torch.no_grad()
def lse_error_and_mask(
    W: torch.Tensor, H: torch.Tensor, group_size: int = 128, ratio: float = 0.5
) -> tuple[float, torch.Tensor]:
    """Greedy LSA error of ``W`` (out, in) under the Gram matrix ``H`` (in, in), and its mask.

    Per output row k, within each group of ``group_size`` input columns (0: the whole row), the
    search removes ``int(len(group)·ratio)`` weights one at a time, each time the one whose removal
    adds the least output error given those already removed, ε_kj = W_kj²H_jj + 2 W_kj Σ_{i∈P_k} W_ki H_ij.
    No weight is changed. Returns E = Σ_k W_k[P_k] H[P_k, P_k] W_k[P_k]ᵀ (the exact quadratic error
    ‖(W − M⊙W) Xᵀ‖² of the mask, up to the scale of H) and the boolean mask of removed weights.
    """
    if W.dim() != 2 or H.dim() != 2 or H.shape[0] != H.shape[1] or H.shape[0] != W.shape[1]:
        raise ValueError(f"lse_error needs W (out, in) and H (in, in); got {tuple(W.shape)} and {tuple(H.shape)}")
    if group_size < 0:
        raise ValueError(f"group_size must be >= 0 (0 = whole row), got {group_size}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    device = W.device  # the model's device (the engine keeps statistics on the CPU)
    W = _as_float32(W)
    H = _as_float32(H, device)
    rows, cols = W.shape
    block = cols if group_size == 0 else group_size
    row_index = torch.arange(rows, device=device)
    # score[k, j] = ε_kj, the error added if W[k, j] is removed next; updated in place.
    score = W * W * torch.diagonal(H)[None, :]
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = W[:, i1:i2]
        s1 = score[:, i1:i2]  # view: updates land in `score`
        h11 = H[i1:i2, i1:i2]
        m1 = mask[:, i1:i2]
        removed = torch.zeros_like(w1)  # the removed weights of this group, 0 elsewhere
        for _ in range(int((i2 - i1) * ratio)):
            idx = torch.argmin(s1, dim=1)
            total += s1[row_index, idx].sum(dtype=torch.float64)
            w = w1[row_index, idx]
            # ε_kj += 2 W_kj W_k,idx H_idx,j for every column j of the group
            s1.add_(w1 * h11[idx] * (2.0 * w)[:, None])
            s1[row_index, idx] = torch.inf
            removed[row_index, idx] = w
            m1[row_index, idx] = True
        if i2 < cols:
            # cross-terms of this group's removed weights with every later column
            score[:, i2:].add_(W[:, i2:] * (removed @ H[i1:i2, i2:]) * 2.0)
    return float(total), mask


def lse_error(W: torch.Tensor, H: torch.Tensor, group_size: int = 128, ratio: float = 0.5) -> float:
    """LSA's linear reconstruction error of ``W`` under ``H``; see :func:`lse_error_and_mask`."""
    return lse_error_and_mask(W, H, group_size, ratio)[0]


@torch.no_grad()
def wanda_metric(W: torch.Tensor, input_sq_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's per-weight score |W_kj|·‖X_j‖₂, float32, shape of ``W``."""
    norm = _as_float32(input_sq_norm, W.device)
    return _as_float32(W).abs() * torch.sqrt(norm)[None, :]


def _flat(metrics: Sequence[torch.Tensor]) -> torch.Tensor:
    if not metrics:
        raise ValueError("no metric tensors given")
    device = metrics[0].device
    return torch.cat([_as_float32(m, device).flatten() for m in metrics])


@torch.no_grad()
def outlier_ratio(metrics: Sequence[torch.Tensor], M: float = 5.0) -> float:
    """OWL's LOD in percent: the share of entries above M times the mean, over all ``metrics``."""
    flat = _flat(metrics)
    threshold = flat.mean() * M
    return 100.0 * int((flat > threshold).sum()) / flat.numel()


@torch.no_grad()
def dlp_score(metrics: Sequence[torch.Tensor], reduce: Literal["median", "mean"] = "median") -> float:
    """DLP's unit statistic: |median| (or |mean|) of all ``metrics`` together.

    The median is ``torch.median`` (the lower of the two middle values for an even count), as in
    the references, which call it on the flattened float32 tensor.
    """
    flat = _flat(metrics)
    if reduce == "median":
        value = torch.median(flat)
    elif reduce == "mean":
        value = flat.mean()
    else:
        raise ValueError(f"reduce must be 'median' or 'mean', got {reduce!r}")
    return abs(float(value))

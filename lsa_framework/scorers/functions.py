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


# Elements of one (rows × group) block that the CPU search works on at a time. Every step streams the
# score block, the weight block and the gathered rows of H once or twice; three float32 blocks of this
# size (1.5 MiB) stay in a core's L2 cache. Whole-row groups (group_size 0) of 576- and 1536-wide
# matrices ran 1.6x faster than the old per-step code without the split and about 2.5x with it;
# 128-wide groups of at most 1024 rows are not split. Rows are independent within a group, so the
# split changes no result.
_CPU_BLOCK_ELEMENTS = 1 << 17


def _greedy_block(
    s: torch.Tensor,
    w1: torch.Tensor,
    h11: torch.Tensor,
    vals: torch.Tensor,
    idxs: torch.Tensor,
    exact_argmin: bool,
) -> None:
    """The greedy removals of one group for a block of rows, in place on ``s``.

    ``s`` and ``w1`` are contiguous (r, g) copies: argmin along a contiguous row and flat indices
    (row·g + column) are several times faster than on a column slice of the wide score matrix. Step t
    writes its chosen ε and column to ``vals[t]`` and ``idxs[t]`` (each (r,)), so the mask, the removed
    weights and E are formed once per group instead of by scatters at every step.

    The score update does the reference's float32 operations in its order, ((W·H_idx)·2w) then +, as
    separate in-place ops (no fused multiply-add), so every score, hence every argmin, is bit-identical.

    ``torch.argmin`` along rows with index tracking is the slowest op of the loop; with
    ``exact_argmin`` false it is replaced by vectorised float ops: v = min(s), then the smallest of
    j + g·sign(s_j − v), which is the first j with s_j == v. For a finite v, s_j − v is 0 exactly when
    s_j == v (so ties resolve to the first column, as argmin's do). v is non-finite only if a row
    holds a NaN or −inf score or nothing but +inf; the caller sees that in ``vals`` and redoes the
    block with ``exact_argmin``, the reference's own argmin.
    """
    r, g = s.shape
    device = s.device
    buf = torch.empty_like(s)
    columns = torch.arange(g, dtype=torch.float32, device=device)
    row_start = torch.arange(0, r * g, g, device=device)
    key = torch.empty(r, device=device)
    flat = torch.empty(r, dtype=torch.long, device=device)
    twice_w = torch.empty(r, 1, device=device)
    twice_w_flat = (2.0 * w1).view(-1)  # 2·w is exact, so a gather from it is the reference's 2.0 * w
    s_flat = s.view(-1)
    for v, idx in zip(vals.unbind(0), idxs.unbind(0), strict=True):
        if exact_argmin:
            torch.argmin(s, dim=1, out=idx)
            torch.add(idx, row_start, out=flat)
            torch.take(s_flat, flat, out=v)
        else:
            torch.amin(s, dim=1, out=v)
            torch.sub(s, v[:, None], out=buf)
            buf.sign_()
            torch.add(columns, buf, alpha=g, out=buf)
            torch.amin(buf, dim=1, out=key)
            idx.copy_(key.nan_to_num_(0.0))  # NaN only with a non-finite v: keeps the index valid
            torch.add(idx, row_start, out=flat)
        # ε_kj += 2 W_kj W_k,idx H_idx,j for every column j of the group
        torch.index_select(h11, 0, idx, out=buf)
        buf.mul_(w1)
        torch.take(twice_w_flat, flat, out=twice_w.view(-1))
        buf.mul_(twice_w)
        s.add_(buf)
        s_flat.index_fill_(0, flat, torch.inf)


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

    Groups are searched in order: a group's removals add cross-terms to the scores of every later
    column, so groups cannot be searched together; rows can, and are (see :func:`_greedy_block`).
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
    # score[k, j] = ε_kj, the error added if W[k, j] is removed next; a group's block is copied out
    # before its search, so `score` only ever receives the cross-terms of earlier groups.
    score = W * W * torch.diagonal(H)[None, :]
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        g = i2 - i1
        steps = int(g * ratio)
        w1 = W[:, i1:i2].contiguous()
        h11 = H[i1:i2, i1:i2].contiguous()
        vals = torch.empty(steps, rows, device=device)  # ε of the weight removed at each step
        idxs = torch.empty(steps, rows, dtype=torch.long, device=device)
        # On a GPU the launches, not the cache, set the pace: one block of all rows.
        parts = -(-rows * g // _CPU_BLOCK_ELEMENTS) if device.type == "cpu" else 1
        chunk = max(1, -(-rows // max(1, parts)))
        for r1 in range(0, rows, chunk):
            r2 = min(r1 + chunk, rows)
            part = (vals[:, r1:r2], idxs[:, r1:r2])
            for exact_argmin in (False, True):
                # a copy even where the slice is contiguous (whole rows): a redo needs `score` intact
                s = score[r1:r2, i1:i2].clone(memory_format=torch.contiguous_format)
                _greedy_block(s, w1[r1:r2], h11, *part, exact_argmin=exact_argmin)
                if bool(torch.isfinite(part[0]).all()):
                    break
        # E sums the chosen ε in float64, as the per-step sums did (only the order of the sum differs)
        total += vals.sum(dtype=torch.float64)
        chosen = idxs.t()
        mask[:, i1:i2].scatter_(1, chosen, True)
        if i2 < cols:
            # cross-terms of this group's removed weights with every later column
            removed = torch.zeros(rows, g, device=device).scatter_(1, chosen, w1.gather(1, chosen))
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

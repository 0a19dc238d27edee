"""Pruning masks and the SparseGPT weight update, as pure tensor functions (no model, fp32 math).

Convention: a mask is a bool tensor shaped like the weight ``W`` (out_features, in_features) in
which ``True`` means *pruned* (the weight is set to zero).

References:

- Wanda — Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language
  Models" (2023), code locuslab/wanda ``lib/prune.py`` (``prune_wanda``, ``prune_magnitude``).
  Metric S = |W| · ‖X_j‖₂ with ‖X_j‖₂² = ``input_sq_norm``; the int(in·s) smallest of each output
  row are pruned; N:M prunes the N smallest of every M consecutive inputs of each row.
- SparseGPT — Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot" (2023), code IST-DASLab/sparsegpt ``sparsegpt.py`` (``fasterprune``).

Where we differ from the reference code, on purpose:

- Exact counts. The references take ``thresh = sort(metric)[k]`` and prune ``metric <= thresh``,
  which prunes k + 1 entries (and more when values tie; one entry even at sparsity 0). Magnitude and
  the SparseGPT block mask here prune exactly k = int(numel·s) entries, chosen by a stable sort so
  ties are broken by position, deterministically.
- SparseGPT's returned mask also marks the weights of dead input columns (diag H = 0), which are
  zeroed as in the reference; the mask is thus exactly the set of weights the pruner zeroed.
- SparseGPT N:M requires ``blocksize`` to be a multiple of M (the reference silently misaligns the
  groups otherwise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lsa_framework.errors import BadInputError
from lsa_framework.types import Pattern

__all__ = [
    "magnitude_mask",
    "matrix_mask",
    "nm_mask",
    "row_mask",
    "sparsegpt_prune",
    "wanda_mask",
]


def _check_matrix(metric: Tensor) -> None:
    if metric.dim() != 2:
        raise BadInputError(
            f"A pruning metric must be a 2-D (out_features, in_features) matrix, got shape {tuple(metric.shape)}."
        )


def _check_sparsity(sparsity: float) -> None:
    if not (math.isfinite(float(sparsity)) and 0.0 <= float(sparsity) <= 1.0):
        raise BadInputError(f"Sparsity {sparsity!r} is not a fraction between 0 and 1; pass e.g. 0.5.")


def _check_nm(in_features: int, n: int, m: int) -> None:
    if not 0 < n < m:
        raise BadInputError(f"Pattern {n}:{m} is impossible: N:M needs 0 < N < M, e.g. 2:4.")
    if in_features % m != 0:
        raise BadInputError(
            f"Pattern {n}:{m} needs in_features divisible by {m}, but a linear has {in_features} inputs; "
            f"use an M that divides {in_features} or an unstructured pattern."
        )


def nm_mask(metric: Tensor, n: int, m: int) -> Tensor:
    """N:M mask: in each row, the ``n`` smallest of every ``m`` consecutive input columns.

    The selection equals Wanda's ``torch.topk(largest=False)`` when there are no ties; ties (common in
    dequantised weights) are broken by a stable sort, so masks are the same on every device.
    """
    _check_matrix(metric)
    rows, cols = metric.shape
    _check_nm(cols, n, m)
    groups = metric.detach().to(torch.float32).reshape(rows, cols // m, m)
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=metric.device)
    if n > 0:
        idx = torch.sort(groups, dim=-1, stable=True).indices[..., :n]
        mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def row_mask(metric: Tensor, sparsity: float) -> Tensor:
    """Per output row, the int(in_features·sparsity) smallest entries (stable sort), as in Wanda."""
    _check_matrix(metric)
    _check_sparsity(sparsity)
    k = int(metric.shape[1] * sparsity)
    mask = torch.zeros(metric.shape, dtype=torch.bool, device=metric.device)
    if k > 0:
        order = torch.sort(metric.detach().to(torch.float32), dim=-1, stable=True).indices
        mask.scatter_(1, order[:, :k], True)
    return mask


def matrix_mask(metric: Tensor, sparsity: float) -> Tensor:
    """One threshold for the whole matrix: exactly the int(numel·sparsity) smallest entries.

    Like Wanda's ``prune_magnitude`` but with an exact count (stable sort instead of ``<= thresh``).
    """
    _check_matrix(metric)
    _check_sparsity(sparsity)
    k = int(metric.numel() * sparsity)
    flat = torch.zeros(metric.numel(), dtype=torch.bool, device=metric.device)
    if k > 0:
        order = torch.sort(metric.detach().to(torch.float32).flatten(), stable=True).indices
        flat[order[:k]] = True
    return flat.reshape(metric.shape)


def magnitude_mask(weight: Tensor, sparsity: float, pattern: Pattern) -> Tensor:
    """Magnitude pruning: |W| per matrix (unstructured) or per group of M (N:M; ``sparsity`` ignored)."""
    metric = weight.detach().to(torch.float32).abs()
    if pattern.is_nm:
        return nm_mask(metric, pattern.n, pattern.m)
    return matrix_mask(metric, sparsity)


def wanda_mask(weight: Tensor, input_sq_norm: Tensor, sparsity: float, pattern: Pattern) -> Tensor:
    """Wanda: S = |W| · sqrt(input_sq_norm)[None, :], per row (unstructured) or per group of M (N:M)."""
    _check_matrix(weight)
    if input_sq_norm.shape != (weight.shape[1],):
        raise BadInputError(
            f"input_sq_norm has shape {tuple(input_sq_norm.shape)} but the weight has "
            f"{weight.shape[1]} inputs; the statistics do not belong to this linear."
        )
    norm = input_sq_norm.detach().to(device=weight.device, dtype=torch.float32)
    metric = weight.detach().to(torch.float32).abs() * torch.sqrt(norm)[None, :]
    if pattern.is_nm:
        return nm_mask(metric, pattern.n, pattern.m)
    return row_mask(metric, sparsity)


def _upper_cholesky_of_inverse(H: Tensor) -> Tensor:
    """Upper Cholesky factor of H⁻¹ (cholesky → cholesky_inverse → cholesky upper), as SparseGPT."""
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        Hinv = torch.cholesky_inverse(L)
        U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
        if int(info) == 0 and bool(torch.isfinite(U).all()):
            return U
    raise BadInputError(
        "SparseGPT could not factor the input Hessian H even after damping (it is not positive "
        "definite); increase percdamp, e.g. --pruner-opt percdamp=0.1, or use more calibration data."
    )


def sparsegpt_prune(
    weight: Tensor,
    gram: Tensor,
    sparsity: float,
    pattern: Pattern,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """SparseGPT: prune ``weight`` (W) using the input Hessian ``gram`` (H = 2/n·ΣXᵀX).

    Returns ``(new_weight, mask)``: the OBS-updated weights in ``weight``'s dtype (pruned entries are
    0) and the bool mask of zeroed weights. The inputs are not modified; the math runs in float32.

    Steps (Frantar & Alistarh 2023, ``fasterprune``): dead input columns (diag H = 0) get
    H[d, d] = 1 and W[:, d] = 0; H += percdamp·mean(diag H)·I; Hinv = upper Cholesky factor of H⁻¹.
    Columns are processed in blocks of ``blocksize``. Unstructured: the block mask is chosen once,
    jointly over all rows of the block, from w² / diag(Hinv₁)² — exactly int(block_numel·sparsity)
    smallest via a stable sort (the reference's ``<= thresh`` prunes one more and over-prunes on
    ties). N:M (``sparsity`` ignored): every M columns, the N smallest of w² / diag(Hinv₁)² per row
    over the next M currently updated columns. Each column is then zeroed where masked, its error
    err = (w − q) / Hinv₁[i, i] is propagated to the block's later columns (W₁[:, i:] −= err ⊗
    Hinv₁[i, i:]), and after the block the later columns get the lazy batch update
    W[:, i₂:] −= Err₁ · Hinv[i₁:i₂, i₂:].
    """
    _check_matrix(weight)
    rows, cols = weight.shape
    if gram.shape != (cols, cols):
        raise BadInputError(
            f"The Hessian has shape {tuple(gram.shape)} but the weight has {cols} inputs; the statistics "
            "do not belong to this linear."
        )
    if blocksize < 1:
        raise BadInputError(f"SparseGPT blocksize must be a positive integer, got {blocksize}.")
    if not (math.isfinite(percdamp) and percdamp >= 0):
        raise BadInputError(f"SparseGPT percdamp must be a non-negative number, got {percdamp}.")
    if pattern.is_nm:
        n, m = pattern.n, pattern.m
        _check_nm(cols, n, m)
        if blocksize % m != 0:
            raise BadInputError(
                f"SparseGPT with pattern {pattern} needs a blocksize that is a multiple of {m}, got "
                f"{blocksize}; pass e.g. --pruner-opt blocksize=128."
            )
    else:
        _check_sparsity(sparsity)

    W = weight.detach().to(dtype=torch.float32, copy=True)
    H = gram.detach().to(device=W.device, dtype=torch.float32, copy=True)
    if not bool(torch.isfinite(H).all()):
        raise BadInputError("The SparseGPT Hessian contains NaN or inf; check the calibration inputs.")

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(cols, device=W.device)
    H[diag, diag] += damp
    Hinv = _upper_cholesky_of_inverse(H)
    del H

    mask = torch.zeros((rows, cols), dtype=torch.bool, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)

        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if not pattern.is_nm:
            k = int(W1.numel() * sparsity)
            if k > 0:
                tmp = W1**2 / d1[None, :] ** 2
                order = torch.sort(tmp.flatten(), stable=True).indices
                mask1.view(-1)[order[:k]] = True

        for i in range(count):
            if pattern.is_nm and i % pattern.m == 0:
                tmp = W1[:, i : i + pattern.m] ** 2 / d1[None, i : i + pattern.m] ** 2
                idx = torch.sort(tmp, dim=1, stable=True).indices[:, : pattern.n]
                mask1.scatter_(1, i + idx, True)
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
    W[mask] = 0  # exact zeros, whatever rounding the updates left
    return W.to(weight.dtype), mask

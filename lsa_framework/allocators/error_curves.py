"""Error curves: the layer-local reconstruction error of one linear at a grid of sparsities.

For a linear with weight W (out, in), Gram H = (2/n)·ΣXᵀX and a mask M (True = pruned), the error of
pruning without a weight update is

    E(M) = tr((W − Ŵ) H (W − Ŵ)ᵀ),  Ŵ = W ⊙ (1 − M),

i.e. (2/n)·‖(W − Ŵ)Xᵀ‖², the quantity LSA's LSE measures for its greedy 50% mask (Yang et al., ICLR
2026), here for the Wanda mask (Sun et al., 2023) at every level of a grid. The curves feed the
rate–distortion allocator (:mod:`lsa_framework.allocators.budget`), the classic bit-allocation view
(Shoham & Gersho, "Efficient bit allocation for an arbitrary set of quantizers", 1988): one error
curve per unit, the budget spent where the error grows slowest.

How the curve is computed. Wanda's masks are nested: every row prunes a prefix of one fixed order
(its entries by ascending |W|·‖X_j‖, stable), and a higher sparsity only lengthens the prefixes. With
A_l = W ⊙ M_l and D_l = A_l − A_{l−1} (the weights newly pruned at level l, disjoint from A_{l−1}),

    G_l = A_l H = G_{l−1} + D_l H,      E_l = E_{l−1} + ⟨D_l, 2 G_{l−1} + D_l H⟩.

The first level costs one dense product (A_1 H); every later level costs a product with the sparse
D_l only, nnz(D_l)·in multiply-adds. All levels together cost about (1 + s_L − s_1) dense products in
flops instead of L. Sparse products run several times below BLAS speed (one CPU thread, 1536×576:
~10× per flop), so an increment denser than ``sparse_max_density`` is multiplied densely; the result is
the same up to float rounding. All arithmetic is float64.

A SparseGPT-flavoured curve (:func:`sparsegpt_error_curve`) gives the error after SparseGPT's OBS
update. Its masks are chosen on the updated weights block by block, so they are not nested across
levels and nothing carries over: it runs SparseGPT once per level (one Cholesky factor shared, as in
:func:`~lsa_framework.pruners.masks.sparsegpt_prune_stacked`), as EvoPress builds its level database
(IST-DASLab/EvoPress ``src/fast_obc.py``, one OBS pass per sparsity). It costs L SparseGPT runs.

The fast curve (:func:`anchored_wanda_curve`, what ``--scorer rd`` uses). Split the error into its
diagonal and off-diagonal parts, E(M) = Σ_{pruned} w_rj² H_jj + Σ_{pruned j≠k} w_rj H_jk w_rk. The
diagonal part at every level is a prefix sum along each row's order (O(out·in) for all levels at
once); the full error costs a product with H per level. So the full error is computed exactly at a
few *anchor* levels only (one batched f32 product, accumulated in f64), and at the other levels the
off-diagonal part is interpolated linearly between anchors (it is 0 at sparsity 0). On the default
model the off-diagonal part is a few percent of the error (2–10% at 70%), so the interpolated
points are within ~1–3% of the exact ones with anchors 0.1 apart (measured on layers 2, 15 and 28).
At the anchors the curve is exact.

Normalisation (:func:`normalise_curves`) decides the allocation; see its docstring.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lsa_framework.errors import BadInputError
from lsa_framework.pruners.masks import Rounding, exact_count, sparsegpt_prune_stacked
from lsa_framework.scorers.functions import wanda_metric
from lsa_framework.types import Pattern

__all__ = [
    "WandaLevels",
    "anchored_wanda_curve",
    "diagonal_error_curve",
    "mask_error",
    "nested_error_curve",
    "normalise_curves",
    "sparsegpt_error_curve",
    "sum_curves",
    "wanda_error_curve",
    "wanda_levels",
]

# Above this share of new entries an increment D_l·H is cheaper as a dense product (measured on one
# CPU thread; the crossover was near 10%).
SPARSE_MAX_DENSITY = 1 / 16


def _check_levels(levels: Sequence[float]) -> list[float]:
    grid = [float(s) for s in levels]
    if not grid:
        raise BadInputError("An error curve needs at least one sparsity level.")
    if any(not (math.isfinite(s) and 0.0 <= s <= 1.0) for s in grid):
        raise BadInputError(f"Sparsity levels must be fractions between 0 and 1, got {grid}.")
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise BadInputError(f"Sparsity levels must be strictly increasing, got {grid}.")
    return grid


def _check_linear(weight: Tensor, gram: Tensor | None, input_sq_norm: Tensor | None) -> None:
    if weight.dim() != 2:
        raise BadInputError(f"A weight must be a 2-D (out, in) matrix, got shape {tuple(weight.shape)}.")
    cols = weight.shape[1]
    if gram is not None and gram.shape != (cols, cols):
        raise BadInputError(f"The Gram matrix has shape {tuple(gram.shape)} but the weight has {cols} inputs.")
    if input_sq_norm is not None and input_sq_norm.shape != (cols,):
        raise BadInputError(f"input_sq_norm has shape {tuple(input_sq_norm.shape)} but the weight has {cols} inputs.")


@dataclass(frozen=True)
class WandaLevels:
    """The Wanda masks of one linear at a grid of sparsities: one stable order per row and the counts.

    ``order[r]`` lists row r's input columns, least important first (ascending |W|·‖X_j‖, ties by
    position: the order of :func:`~lsa_framework.pruners.masks.row_mask`); ``counts[l, r]`` is how
    many of them level l prunes. ``mask(l)`` equals ``wanda_mask(W, input_sq_norm, levels[l],
    Pattern(), rounding)`` bit for bit, so the grid doubles as a cheap level database.
    """

    levels: tuple[float, ...]
    order: Tensor  # (out, in) int64
    counts: Tensor  # (L, out) int64, non-decreasing along L

    def mask(self, level: int) -> Tensor:
        rows, cols = self.order.shape
        positions = torch.arange(cols, device=self.order.device)[None, :] < self.counts[level][:, None]
        return torch.zeros(rows, cols, dtype=torch.bool, device=self.order.device).scatter_(1, self.order, positions)


def _row_counts(sorted_metric: Tensor, levels: Sequence[float], rounding: Rounding) -> Tensor:
    """Pruned entries per row at each level, by the rule of :func:`~lsa_framework.pruners.masks.row_mask`."""
    rows, cols = sorted_metric.shape
    counts = torch.empty(len(levels), rows, dtype=torch.int64, device=sorted_metric.device)
    for i, s in enumerate(levels):
        if rounding == "floor":
            counts[i] = int(cols * s)
            continue
        if rounding != "exact":
            raise BadInputError(f"rounding must be 'floor' or 'exact', got {rounding!r}.")
        k, r = divmod(exact_count(rows * cols, s), max(rows, 1))
        counts[i] = k
        if r:
            # the r rows whose (k+1)-th entry is smallest, ties to the lower row (stable sort)
            chosen = torch.sort(sorted_metric[:, k], stable=True).indices[:r]
            counts[i, chosen] += 1
    return counts


@torch.no_grad()
def wanda_levels(
    weight: Tensor, input_sq_norm: Tensor, levels: Sequence[float], rounding: Rounding = "floor"
) -> WandaLevels:
    """The Wanda masks of ``weight`` at every sparsity of ``levels`` (strictly increasing), as one order."""
    _check_linear(weight, None, input_sq_norm)
    grid = _check_levels(levels)
    metric = wanda_metric(weight, input_sq_norm)  # the float32 metric wanda_mask ranks by
    # A stable ascending sort puts NaN last, like the selection in row_mask.
    sorted_metric, order = torch.sort(metric, dim=1, stable=True)
    return WandaLevels(tuple(grid), order, _row_counts(sorted_metric, grid, rounding))


def mask_error(weight: Tensor, gram: Tensor, mask: Tensor) -> float:
    """tr(ΔW H ΔWᵀ) with ΔW = W ⊙ mask, in float64 (the direct computation, one dense product)."""
    delta = weight.detach().to(torch.float64) * mask
    return float(((delta @ gram.detach().to(torch.float64)) * delta).sum())


def _increment(weight: Tensor, order: Tensor, start: Tensor, stop: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows, columns and weights of the entries at positions [start_r, stop_r) of each row's order."""
    lo, hi = int(start.min()), int(stop.max())
    positions = torch.arange(lo, hi, device=order.device)[None, :]
    rows, slot = ((positions >= start[:, None]) & (positions < stop[:, None])).nonzero(as_tuple=True)
    cols = order[rows, slot + lo]
    return rows, cols, weight[rows, cols]


@torch.no_grad()
def nested_error_curve(
    weight: Tensor, gram: Tensor, levels: WandaLevels, sparse_max_density: float = SPARSE_MAX_DENSITY
) -> Tensor:
    """tr(ΔW_l H ΔW_lᵀ) at every level of ``levels`` (any nested row-prefix masks), float64 (L,).

    Incremental over the levels (see the module docstring): one dense product for the first level,
    then one product with the newly pruned entries per level.
    """
    _check_linear(weight, gram, None)
    if levels.order.shape != weight.shape:
        raise BadInputError(
            f"The level masks have shape {tuple(levels.order.shape)}, the weight {tuple(weight.shape)}."
        )
    W = weight.detach().to(torch.float64)
    H = gram.detach().to(device=W.device, dtype=torch.float64)
    # The update uses ⟨A, D H⟩ = ⟨D, A H⟩, true for a symmetric H only; an accumulated XᵀX is symmetric
    # up to rounding, and the quadratic form only sees the symmetric part anyway.
    H = (H + H.T) / 2
    order = levels.order.to(W.device)
    counts = levels.counts.to(W.device)
    out, cols = W.shape
    errors = torch.zeros(counts.shape[0], dtype=torch.float64)
    G = torch.zeros_like(W)  # A_l H
    total = 0.0
    previous = torch.zeros(out, dtype=torch.int64, device=W.device)
    for i in range(counts.shape[0]):
        rows, cidx, vals = _increment(W, order, previous, counts[i])
        previous = counts[i]
        if vals.numel() == 0:
            errors[i] = total
            continue
        if vals.numel() > sparse_max_density * W.numel():
            D = torch.zeros_like(W).index_put_((rows, cidx), vals)
            DH = D @ H
        else:
            D_sparse = torch.sparse_coo_tensor(
                torch.stack([rows, cidx]), vals, (out, cols), is_coalesced=False, check_invariants=False
            )
            DH = torch.sparse.mm(D_sparse, H)
        total += float((vals * (2.0 * G[rows, cidx] + DH[rows, cidx])).sum())
        G += DH
        errors[i] = total
    return errors


def wanda_error_curve(
    weight: Tensor,
    gram: Tensor,
    input_sq_norm: Tensor,
    levels: Sequence[float],
    rounding: Rounding = "floor",
) -> Tensor:
    """The error tr(ΔW H ΔWᵀ) of the Wanda mask of ``weight`` at each sparsity of ``levels``, float64 (L,).

    ``rounding`` must be the one the pruner will use, so that each point is the error of the mask
    actually applied at that sparsity.
    """
    return nested_error_curve(weight, gram, wanda_levels(weight, input_sq_norm, levels, rounding))


@torch.no_grad()
def diagonal_error_curve(weight: Tensor, gram: Tensor, levels: WandaLevels) -> Tensor:
    """Σ_{pruned} w_rj² H_jj at every level of ``levels`` (the diagonal part of the error), float64 (L,)."""
    _check_linear(weight, gram, None)
    W = weight.detach().to(torch.float64)
    diag = torch.diagonal(gram.detach()).to(device=W.device, dtype=torch.float64)
    ordered = (W.pow(2) * diag[None, :]).gather(1, levels.order.to(W.device))
    prefix = torch.nn.functional.pad(ordered.cumsum(dim=1), (1, 0))  # prefix[r, c] = sum of the first c
    counts = levels.counts.to(W.device)
    return torch.stack([prefix.gather(1, counts[i][:, None]).sum() for i in range(counts.shape[0])]).cpu()


@torch.no_grad()
def anchored_wanda_curve(
    weight: Tensor,
    gram: Tensor,
    input_sq_norm: Tensor,
    levels: Sequence[float],
    anchors: Sequence[float],
    rounding: Rounding = "floor",
) -> Tensor:
    """The Wanda-mask error at every sparsity of ``levels``: exact at ``anchors`` (a subset of
    ``levels`` that includes the largest level), elsewhere the exact diagonal part plus the
    off-diagonal part interpolated linearly between anchors; float64 (L,). See the module docstring."""
    grid = _check_levels(levels)
    marks = _check_levels(anchors)
    missing = [a for a in marks if not any(abs(a - s) <= 1e-12 for s in grid)]
    if missing or marks[-1] < grid[-1] - 1e-12:
        raise BadInputError(f"The anchors {marks} must be levels of the grid and include its largest, {grid[-1]}.")
    _check_linear(weight, gram, input_sq_norm)
    found = wanda_levels(weight, input_sq_norm, grid, rounding)
    diagonal = diagonal_error_curve(weight, gram, found)
    at = [min(range(len(grid)), key=lambda i: abs(grid[i] - a)) for a in marks]
    W = weight.detach().to(torch.float32)
    H = gram.detach().to(device=W.device, dtype=torch.float32)
    H = (H + H.T) / 2
    pruned = torch.stack([W * found.mask(i) for i in at])  # (K, out, in)
    product = (pruned.reshape(-1, W.shape[1]) @ H).reshape(pruned.shape)
    exact = product.mul_(pruned).sum(dim=2).to(torch.float64).sum(dim=1).cpu()  # row sums in f32, then f64
    off_x = [0.0] + [grid[i] for i in at]
    off_y = [0.0] + [float(exact[k] - diagonal[i]) for k, i in enumerate(at)]
    if grid[at[0]] <= 0.0:  # an anchor at sparsity 0 is the (0, 0) point itself
        off_x, off_y = off_x[1:], off_y[1:]
    off = torch.tensor([_interpolate(off_x, off_y, s) for s in grid], dtype=torch.float64)
    curve = diagonal + off
    curve[at] = exact
    return curve


def _interpolate(x: Sequence[float], y: Sequence[float], at: float) -> float:
    """Piecewise-linear interpolation through (x, y), x increasing; constant beyond the ends."""
    if at <= x[0]:
        return y[0]
    for (x0, y0), (x1, y1) in itertools.pairwise(zip(x, y, strict=True)):
        if at <= x1:
            return y0 + (y1 - y0) * (at - x0) / (x1 - x0)
    return y[-1]


@torch.no_grad()
def sparsegpt_error_curve(
    weight: Tensor,
    gram: Tensor,
    levels: Sequence[float],
    blocksize: int = 128,
    percdamp: float = 0.01,
    max_stack: int = 8,
) -> Tensor:
    """The error tr(ΔW H ΔWᵀ) after SparseGPT at each sparsity of ``levels``, float64 (L,).

    ΔW = W − Ŵ with Ŵ the OBS-updated weights of :func:`~lsa_framework.pruners.masks.sparsegpt_prune`
    (dead input columns zeroed, as the pruner does). H is the undamped Gram: the damping only
    regularises the update, the error is that on the calibration inputs. Up to ``max_stack`` levels
    run as one stacked SparseGPT pass (one Cholesky factor, one column loop).
    """
    _check_linear(weight, gram, None)
    grid = _check_levels(levels)
    W = weight.detach().to(torch.float32)
    H = gram.detach().to(device=W.device, dtype=torch.float64)
    errors = torch.empty(len(grid), dtype=torch.float64)
    for start in range(0, len(grid), max(1, max_stack)):
        chunk = grid[start : start + max(1, max_stack)]
        pruned = sparsegpt_prune_stacked([W] * len(chunk), gram, chunk, Pattern(), blocksize, percdamp)
        for offset, (new_weight, _mask) in enumerate(pruned):
            delta = W.to(torch.float64) - new_weight.to(torch.float64)
            errors[start + offset] = float(((delta @ H) * delta).sum())
    return errors


def sum_curves(curves: Mapping[str, Tensor], units: Mapping[str, Sequence[str]]) -> dict[str, Tensor]:
    """Per-unit curves from per-linear curves: a unit that gives all its linears one sparsity has the
    sum of their errors (the additive proxy; LSA's layer score is the mean, which only rescales it)."""
    return {
        unit: torch.stack([curves[name].to(torch.float64) for name in names]).sum(0) for unit, names in units.items()
    }


def normalise_curves(curves: Mapping[str, Tensor], energy: Mapping[str, float]) -> dict[str, Tensor]:
    """e_u(s) / energy_u: each unit's error relative to the residual-stream energy where it writes.

    Why: a linear's output error is added to the residual stream, and every later layer reads that
    stream through an RMSNorm, which divides by the stream's RMS. What downstream layers see is the
    error relative to the stream, so errors of different depths are only comparable after dividing
    by the stream's energy there; raw errors grow with depth like the stream does and would push all
    sparsity to the first layers. Measured on the default model (DESIGN.md §4, 70% Wanda, layers): raw
    errors gave ~27× uniform's perplexity, errors relative to each layer's own output energy ~15×,
    and errors divided by the residual-stream energy at the layer input matched DLP within 1%.

    What the engine must gather for ``energy`` (pass 1, the dense model): for each decoder layer, the
    mean over calibration tokens of ‖h_t‖², h the hidden state entering the layer (the residual
    stream before its input norm), in float64, excluding the first position of every window (the
    attention sink: its massive activations would dominate the mean). Only ratios between units
    matter, so any normalisation of the mean that is the same for all layers will do. For units
    finer than a layer, attention linears take the energy at the layer input and MLP linears may
    take the energy entering the MLP (the stream after the attention residual add); the layer-input
    value is the measured variant. The caller passes one positive scalar per unit.
    """
    missing = sorted(set(curves) - set(energy))
    if missing:
        raise BadInputError(f"No residual-stream energy for units {missing}.")
    result = {}
    for unit, curve in curves.items():
        scale = float(energy[unit])
        if not (math.isfinite(scale) and scale > 0.0):
            raise BadInputError(f"The residual-stream energy of unit {unit!r} must be positive, got {scale}.")
        result[unit] = curve.to(torch.float64) / scale
    return result

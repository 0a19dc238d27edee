"""Rate–distortion allocation: one sparsity per unit minimising the summed error at an exact budget.

Given per-unit error curves e_u(s_l) over one shared grid of sparsities s_0 < … < s_{L−1} (from
:mod:`lsa_framework.allocators.error_curves`, normalised) and unit sizes N_u, choose s_u to

    minimise Σ_u e_u(s_u)   subject to   Σ_u N_u·s_u = target·Σ_u N_u.

This is the bit-allocation problem of Shoham & Gersho ("Efficient bit allocation for an arbitrary
set of quantizers", 1988), solved the classic way: on each unit's lower convex hull in the (pruned
weights, error) plane, take hull segments in order of increasing slope — the error added per pruned
weight, the Lagrange multiplier λ — until the budget is spent (greedy marginal analysis, equivalent to
bisecting λ). By Everett's theorem (1963) every hull-vertex solution the greedy passes through is
optimal among *all* grid assignments with its own budget; to hit the target exactly, the last segment
is taken fractionally: one unit ends between two of its hull vertices (adjacent ones on its hull,
possibly not adjacent on the grid where the curve is not convex) with the chord as its error.

What the result is optimal for, exactly: among all assignments in which every unit sits at a grid
level except at most one unit, which mixes two of its grid levels linearly to meet the budget (its
error the chord between them), the greedy solution has the smallest Σ e. Proof sketch: chords lie
on or above the lower convex envelope ê_u, so every such assignment costs ≥ min Σ ê_u at the budget,
the LP optimum, which the greedy attains with an assignment of that form. The fractional unit's
chord error is an estimate (its curve is only known on the grid); it is one unit of many.

Curves need not be monotone: EvoPress (Sieberling et al., ICML 2025, §3) shows that more pruning can
lower the error; negative slopes are simply taken first. Finally the sparsities pass through the
shared :func:`~lsa_framework.allocators.mapping.finalize` (clip, exact mean check), which here only
polishes float rounding because the grid lies inside [0, MAX_SPARSITY].

Not in the references: neither OWL, DLP nor LSA allocate from error curves.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lsa_framework.allocators.mapping import MAX_SPARSITY, finalize, map_scores
from lsa_framework.errors import BadInputError
from lsa_framework.types import Scores

__all__ = ["RDAllocation", "allocate_rd", "lower_convex_hull"]


@dataclass(frozen=True)
class RDAllocation:
    """The allocation and how it was reached.

    ``levels[u]`` is the grid index unit u sits at; for the ``fractional`` unit (None when the budget
    falls on a vertex) it is the lower end of its segment, ``upper`` the upper end and ``theta`` the
    fraction along it. ``error`` is Σ e_u at the chosen levels (the chord for the fractional unit);
    ``multiplier`` is λ, the slope of the last segment taken (error per pruned weight).
    """

    sparsities: dict[str, float]
    levels: dict[str, int]
    fractional: str | None
    upper: int | None
    theta: float
    error: float
    multiplier: float


def lower_convex_hull(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the lower convex hull of the points (x_i, y_i), x strictly increasing, left to right.

    Andrew's monotone chain; collinear middle points are dropped, so hull slopes strictly increase.
    """
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # keep b only if a → b → i turns left (b strictly below the chord a–i)
            cross = (x[b] - x[a]) * (y[i] - y[a]) - (y[b] - y[a]) * (x[i] - x[a])
            if cross > 0:
                break
            hull.pop()
        hull.append(i)
    return hull


def _as_curve(name: str, curve: Sequence[float] | torch.Tensor, length: int) -> list[float]:
    values = [float(v) for v in (curve.tolist() if isinstance(curve, torch.Tensor) else curve)]
    if len(values) != length:
        raise BadInputError(f"The error curve of {name!r} has {len(values)} points, the grid {length}.")
    if not all(math.isfinite(v) for v in values):
        raise BadInputError(f"The error curve of {name!r} contains NaN or inf.")
    return values


def allocate_rd(
    curves: Mapping[str, Sequence[float] | torch.Tensor],
    sizes: Mapping[str, int],
    grid: Sequence[float],
    target: float,
) -> RDAllocation:
    """Per-unit sparsities minimising Σ e_u at parameter-weighted mean ``target``; see the module docstring.

    ``curves[u][l]`` is unit u's error at sparsity ``grid[l]`` (grid strictly increasing, inside
    [0, MAX_SPARSITY]); ``sizes[u]`` its weight count. Units keep the order of ``curves``; ties
    between equal slopes go to the earlier unit, so the result is deterministic.
    """
    levels = [float(s) for s in grid]
    if not levels or any(b <= a for a, b in itertools.pairwise(levels)):
        raise BadInputError(f"The sparsity grid must be non-empty and strictly increasing, got {levels}.")
    if levels[0] < 0.0 or levels[-1] > MAX_SPARSITY:
        raise BadInputError(f"The sparsity grid must lie in [0, {MAX_SPARSITY}], got {levels[0]}..{levels[-1]}.")
    names = list(curves)
    if not names:
        raise BadInputError("No units to allocate.")
    if any(sizes.get(n, 0) <= 0 for n in names):
        raise BadInputError("Every unit needs a positive size (weight count).")
    e = {n: _as_curve(n, curves[n], len(levels)) for n in names}
    total = float(sum(sizes[n] for n in names))
    budget = float(target) * total
    low = sum(sizes[n] * levels[0] for n in names)
    high = sum(sizes[n] * levels[-1] for n in names)
    slack = 1e-12 * total
    if not (low - slack <= budget <= high + slack):
        raise BadInputError(
            f"Target sparsity {target} is outside what the grid can reach ({low / total:.4f}..{high / total:.4f})."
        )

    # Segments of every unit's hull: (slope, unit order, hull position), sorted by slope.
    hulls: dict[str, list[int]] = {}
    segments: list[tuple[float, int, int]] = []
    for order, n in enumerate(names):
        x = [sizes[n] * s for s in levels]
        hulls[n] = hull = lower_convex_hull(x, e[n])
        for j in range(len(hull) - 1):
            a, b = hull[j], hull[j + 1]
            segments.append(((e[n][b] - e[n][a]) / (x[b] - x[a]), order, j))
    segments.sort()

    position = dict.fromkeys(names, 0)  # index into each unit's hull
    spent = low
    fractional: str | None = None
    theta = 0.0
    multiplier = 0.0
    for slope, order, j in segments:
        if spent >= budget - slack:
            break
        n = names[order]
        a, b = hulls[n][j], hulls[n][j + 1]
        length = sizes[n] * (levels[b] - levels[a])
        multiplier = slope
        if spent + length <= budget + slack:
            position[n] = j + 1
            spent += length
            continue
        fractional, theta = n, (budget - spent) / length
        break

    chosen = {n: hulls[n][position[n]] for n in names}
    sparsities = {n: levels[chosen[n]] for n in names}
    error = sum(e[n][chosen[n]] for n in names)
    upper: int | None = None
    if fractional is not None:
        a = chosen[fractional]
        upper = hulls[fractional][position[fractional] + 1]
        sparsities[fractional] = levels[a] + theta * (levels[upper] - levels[a])
        error += theta * (e[fractional][upper] - e[fractional][a])
    return RDAllocation(
        sparsities=finalize(sparsities, sizes, float(target)),
        levels=chosen,
        fractional=fractional,
        upper=upper,
        theta=theta,
        error=error,
        multiplier=multiplier,
    )


def allocate_scores(scores: Scores, sizes: Mapping[str, int], target: float) -> dict[str, float]:
    """What every built-in allocator does with a scorer's output, so that no granularity ignores curves:
    error curves (``--scorer rd``, ``evo``) get the rate-distortion allocation, plain scores the shared
    score → sparsity mapping and its exact parameter-weighted final step."""
    if scores.curves is not None and scores.levels is not None:
        curves = {name: scores.curves[name] for name in sizes}
        return allocate_rd(curves, sizes, scores.levels, target).sparsities
    return finalize(map_scores(scores, sizes, target), sizes, target)

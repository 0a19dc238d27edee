"""Scores → sparsities: the mapping shared by OWL, DLP and LSA, and the exact-mean final step.

The references (OWL, DLP, LSA) all min-max the unit scores to [0, 2β] and centre the band on the
target. At block/projection granularity LSA corrects by parameter count,
s_u = (s·N_u + (mean(d) − d_u)·mean(N)) / N_u, which keeps the pruned weight count exact; with equal
unit sizes (layer granularity) this is s + mean(d) − d_u, the formula of all three references, so
one function serves every granularity.

Our addition (not in the references): :func:`finalize` clips every sparsity to [0, MAX_SPARSITY],
spreads what was clipped over the other units by parameter count, and checks that the
parameter-weighted mean equals the target.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lsa_framework.errors import LsafError
from lsa_framework.types import Scores

MAX_SPARSITY = 0.99
TOLERANCE = 1e-4


def spread_from_scores(scores: Scores) -> dict[str, float]:
    """d_u ∈ [0, 2β]: 2β for the unit that should be pruned least, 0 for the one pruned most."""
    names = list(scores.values)
    x = torch.tensor([scores.values[n] for n in names], dtype=torch.float64)
    if not scores.higher_is_important:
        # DLP/LSE: importance = 1 − x/Σx, whose min-max equals that of −x.
        x = -x
    span = float(x.max() - x.min()) if len(names) else 0.0
    if span <= 0.0 or not torch.isfinite(torch.tensor(span)):
        return dict.fromkeys(names, 0.0)
    d = (x - x.min()) / span * 2 * scores.spread
    return {n: float(v) for n, v in zip(names, d, strict=True)}


def map_scores(scores: Scores, sizes: Mapping[str, int], target: float) -> dict[str, float]:
    """Per-unit sparsity from scores, before the final clipping step."""
    d = spread_from_scores(scores)
    names = list(scores.values)
    mean_d = sum(d.values()) / len(d)
    mean_n = sum(sizes[n] for n in names) / len(names)
    return {n: (target * sizes[n] + (mean_d - d[n]) * mean_n) / sizes[n] for n in names}


def weighted_mean(sparsities: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    total = sum(sizes[n] for n in sparsities)
    return sum(sparsities[n] * sizes[n] for n in sparsities) / total


def finalize(sparsities: Mapping[str, float], sizes: Mapping[str, int], target: float) -> dict[str, float]:
    """Clip to [0, MAX_SPARSITY], redistribute the excess by size, and check the exact mean.

    Repeated water-filling: units pinned at a bound stay there, the remaining pruned-weight deficit
    (or surplus) is spread over the free units in proportion to their size. When every unit is
    pinned and a deficit remains, the units pinned at the other bound (those that can still move
    towards the target) are freed again, so a target inside [0, MAX_SPARSITY] is always reached.
    """
    result = {n: float(s) for n, s in sparsities.items()}
    total = sum(sizes[n] for n in result)
    pinned: set[str] = set()
    # Each pass pins at least one unit or ends; units are freed again at most once (the deficit
    # keeps its sign after that), hence 2n + 2 passes suffice.
    for _ in range(2 * len(result) + 2):
        for n, s in result.items():
            if s < 0.0 or s > MAX_SPARSITY:
                result[n] = min(max(s, 0.0), MAX_SPARSITY)
                pinned.add(n)
        deficit = target * total - sum(result[n] * sizes[n] for n in result)
        if abs(deficit) <= TOLERANCE * total * 1e-3:
            break
        free = [n for n in result if n not in pinned]
        if not free:
            free = [n for n in pinned if (result[n] < MAX_SPARSITY if deficit > 0 else result[n] > 0.0)]
            if not free:
                break
            pinned.difference_update(free)
        free_size = sum(sizes[n] for n in free)
        for n in free:
            result[n] += deficit / free_size
    mean = weighted_mean(result, sizes)
    if abs(mean - target) > TOLERANCE:
        raise LsafError(
            f"Allocation cannot reach the target sparsity {target:.4f} (got {mean:.4f}) within "
            f"[0, {MAX_SPARSITY}] per unit; lower the target or the spread."
        )
    return result

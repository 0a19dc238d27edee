"""Seed statistics for bench tables: mean ± std per method, and paired differences to a baseline.

A bench cell run with several seeds (each seed draws its own calibration windows) gives one value
per seed and method. :func:`summarise` reports mean ± sample standard deviation (ddof = 1).
:func:`paired_differences` compares each method with a baseline *seed by seed*: the same seed gives
both the same calibration windows, so the difference d_s = x_method,s − x_baseline,s cancels what the
seed does to both, and its spread is the noise that matters for "is A better than B".

The rule for "within seed noise": a two-sided paired t-test at level α (default 0.05), i.e.

    |mean(d)| ≤ t_{1−α/2, n−1} · sd(d) / √n,

the 95% confidence interval of the mean paired difference contains 0. Why t and not the common
"2 standard errors": with the 3–5 seeds a bench can afford the standard error is itself uncertain and
t_{0.975, n−1} is 4.30 for n = 3 and 2.78 for n = 5; a 2·se rule would call differences real that a
t-test at 5% does not (2·se at n = 3 is a 18% two-sided test). With n < 2 there is no noise estimate
and the flag is None. For perplexities, whose seed noise scales with their size, pass log values
to compare ratios.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from lsa_framework.errors import BadInputError

__all__ = [
    "PairedDifference",
    "SeedSummary",
    "format_mean_std",
    "paired_differences",
    "student_t_quantile",
    "summarise",
]

Seed = TypeVar("Seed", bound=Hashable)


@dataclass(frozen=True)
class SeedSummary:
    """One method over its seeds: n values, their mean and sample std (None for a single seed)."""

    method: str
    n: int
    mean: float
    std: float | None


@dataclass(frozen=True)
class PairedDifference:
    """method − baseline over the seeds both have.

    ``threshold`` is t_{1−α/2, n−1}·sd/√n (None for n < 2); ``within_noise`` is |mean| ≤ threshold.
    """

    method: str
    baseline: str
    seeds: tuple[Hashable, ...]
    n: int
    mean: float
    std: float | None
    threshold: float | None
    within_noise: bool | None


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def summarise(results: Mapping[str, Mapping[Seed, float]]) -> dict[str, SeedSummary]:
    """Mean ± sample std (ddof = 1) of every method over its seeds; ``results[method][seed]`` = value."""
    summary = {}
    for method, by_seed in results.items():
        values = [float(v) for v in by_seed.values()]
        if not values:
            raise BadInputError(f"Method {method!r} has no results.")
        mean, std = _mean_std(values)
        summary[method] = SeedSummary(method, len(values), mean, std)
    return summary


def _t_cdf_abs(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student's t with integer df ≥ 1 (the closed form in θ = atan(t/√df))."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        term, total = math.cos(theta), 0.0
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):
                term *= c2 * (k - 1) / k
                total += term
        return 2.0 / math.pi * (theta + math.sin(theta) * total)
    term, total = 1.0, 1.0
    for k in range(2, df - 1, 2):
        term *= c2 * (k - 1) / k
        total += term
    return math.sin(theta) * total


def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with integer ``df`` ≥ 1 degrees of freedom (bisection on the CDF)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise BadInputError(f"Need 0 < p < 1 and df >= 1, got p={p}, df={df}.")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    target = 2.0 * p - 1.0  # P(|T| ≤ q)
    hi = 1.0
    while _t_cdf_abs(hi, df) < target:
        hi *= 2.0
    lo = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf_abs(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return (lo + hi) / 2


def paired_differences(
    results: Mapping[str, Mapping[Seed, float]], baseline: str, alpha: float = 0.05
) -> dict[str, PairedDifference]:
    """Every method other than ``baseline`` minus the baseline, seed by seed, with the noise flag.

    ``results[method][seed]`` is one value (e.g. a perplexity, or its log).

    Only seeds present for both enter a pair; a method sharing no seed with the baseline is refused.
    """
    if baseline not in results:
        raise BadInputError(f"Baseline {baseline!r} is not among the methods {sorted(results)}.")
    if not 0.0 < alpha < 1.0:
        raise BadInputError(f"alpha must be in (0, 1), got {alpha}.")
    base = results[baseline]
    paired = {}
    for method, by_seed in results.items():
        if method == baseline:
            continue
        seeds = tuple(s for s in by_seed if s in base)
        if not seeds:
            raise BadInputError(f"Method {method!r} shares no seed with the baseline {baseline!r}.")
        diffs = [float(by_seed[s]) - float(base[s]) for s in seeds]
        mean, std = _mean_std(diffs)
        threshold = within = None
        if std is not None:
            threshold = student_t_quantile(1.0 - alpha / 2, len(diffs) - 1) * std / math.sqrt(len(diffs))
            within = abs(mean) <= threshold
        paired[method] = PairedDifference(method, baseline, seeds, len(diffs), mean, std, threshold, within)
    return paired


def format_mean_std(mean: float, std: float | None, digits: int = 2) -> str:
    """'12.34 ± 0.56' (or '12.34' for a single seed), for table cells."""
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"

"""Seed statistics against direct computations (statistics module, numeric integration, scipy if present)."""

from __future__ import annotations

import math
import statistics

import pytest

from lsa_framework.bench.seeds import format_mean_std, paired_differences, student_t_quantile, summarise
from lsa_framework.errors import BadInputError

RESULTS = {
    "uniform": {0: 410.0, 1: 432.5, 2: 398.1, 3: 421.7},
    "dlp": {0: 299.0, 1: 310.2, 2: 288.4, 3: 305.9},
    "lsa": {0: 342.0, 1: 330.1, 2: 351.7},  # seed 3 missing
    "owl": {0: 300.5, 1: 309.0, 2: 289.9, 3: 303.1},
}


def _t_cdf_by_integration(x: float, df: int, steps: int = 20_000) -> float:
    """P(T ≤ x) = 1/2 + ∫_0^x pdf, Simpson's rule on the density written from its definition."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(t: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    h = x / steps
    total = pdf(0.0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


def test_summary_is_mean_and_sample_std() -> None:
    summary = summarise(RESULTS)
    for method, by_seed in RESULTS.items():
        values = list(by_seed.values())
        assert summary[method].n == len(values)
        assert summary[method].mean == pytest.approx(statistics.mean(values), rel=1e-15)
        assert summary[method].std == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert summarise({"one": {0: 3.5}})["one"].std is None


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 30])
@pytest.mark.parametrize("p", [0.9, 0.975, 0.995])
def test_t_quantile_inverts_the_integrated_cdf(df: int, p: float) -> None:
    q = student_t_quantile(p, df)
    assert _t_cdf_by_integration(q, df) == pytest.approx(p, abs=1e-7)
    assert student_t_quantile(1 - p, df) == pytest.approx(-q)


def test_t_quantile_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 20, 101):
        assert student_t_quantile(0.975, df) == pytest.approx(float(stats.t.ppf(0.975, df)), rel=1e-10)


def test_paired_differences_against_a_direct_computation() -> None:
    paired = paired_differences(RESULTS, baseline="dlp")
    assert set(paired) == {"uniform", "lsa", "owl"}
    for method, result in paired.items():
        seeds = [s for s in RESULTS[method] if s in RESULTS["dlp"]]
        diffs = [RESULTS[method][s] - RESULTS["dlp"][s] for s in seeds]
        n = len(diffs)
        assert result.seeds == tuple(seeds) and result.n == n
        assert result.mean == pytest.approx(statistics.mean(diffs), rel=1e-12)
        assert result.std == pytest.approx(statistics.stdev(diffs), rel=1e-12)
        # the 95% t confidence interval of the mean difference contains 0 ⇔ within noise
        half_width = student_t_quantile(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
        assert result.threshold == pytest.approx(half_width, rel=1e-12)
        assert result.within_noise == (abs(statistics.mean(diffs)) <= half_width)
    assert paired["uniform"].within_noise is False  # ~+115 on every seed
    assert paired["owl"].within_noise is True  # +1.5, -1.2, +1.5, -2.8


def test_single_shared_seed_has_no_noise_estimate_and_bad_input() -> None:
    paired = paired_differences({"a": {0: 1.0}, "b": {0: 2.0, 1: 3.0}}, baseline="b")
    assert paired["a"].mean == -1.0 and paired["a"].within_noise is None and paired["a"].threshold is None
    with pytest.raises(BadInputError):
        paired_differences(RESULTS, baseline="missing")
    with pytest.raises(BadInputError):
        paired_differences({"a": {5: 1.0}, "b": {0: 2.0}}, baseline="b")


def test_format() -> None:
    assert format_mean_std(299.04, 3.456) == "299.04 ± 3.46"
    assert format_mean_std(299.04, None, digits=1) == "299.0"

"""The shared score → sparsity mapping and the exact-mean final step."""

from __future__ import annotations

import numpy as np
import pytest

from lsa_framework.allocators.mapping import MAX_SPARSITY, finalize, map_scores, weighted_mean
from lsa_framework.errors import LsafError
from lsa_framework.types import Scores

#: one GQA-like decoder layer: hidden 64, 4 query heads and 1 key/value head of 16, MLP 128
PROJECTIONS = {
    "q": 64 * 64,
    "k": 16 * 64,
    "v": 16 * 64,
    "o": 64 * 64,
    "gate": 128 * 64,
    "up": 128 * 64,
    "down": 64 * 128,
}


def projection_sizes(layers: int = 3) -> dict[str, int]:
    return {f"layer.{i}.{p}": n for i in range(layers) for p, n in PROJECTIONS.items()}


def random_scores(names: list[str], seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {n: float(v) for n, v in zip(names, rng.uniform(1.0, 5.0, len(names)), strict=True)}


def test_dlp_formula_at_layer_granularity() -> None:
    values = random_scores([f"layer.{i}" for i in range(6)], seed=0)
    sizes = dict.fromkeys(values, 7 * 4096)
    s, alpha = 0.7, 0.15
    got = map_scores(Scores(values, higher_is_important=False, spread=alpha), sizes, s)
    score = np.array(list(values.values()))
    imp = 1 - score / score.sum()
    d = (imp - imp.min()) / (imp.max() - imp.min()) * 2 * alpha
    expected = s + d.mean() - d  # = 1 − (d − mean(d) + (1 − s)), DLP's density written as sparsity
    np.testing.assert_allclose(list(got.values()), expected, atol=1e-12)


def test_owl_formula_at_layer_granularity() -> None:
    values = random_scores([f"layer.{i}" for i in range(5)], seed=1)
    sizes = dict.fromkeys(values, 1000)
    s, lamda = 0.6, 0.08
    got = map_scores(Scores(values, higher_is_important=True, spread=lamda), sizes, s)
    lod = np.array(list(values.values()))
    D = (lod - lod.min()) / (lod.max() - lod.min()) * 2 * lamda
    expected = 1 - (D - D.mean() + (1 - s))
    np.testing.assert_allclose(list(got.values()), expected, atol=1e-12)


def test_lsa_formula_at_projection_granularity() -> None:
    sizes = projection_sizes()
    values = random_scores(list(sizes), seed=2)
    s, beta = 0.5, 0.07
    got = map_scores(Scores(values, higher_is_important=False, spread=beta), sizes, s)
    E = np.array(list(values.values()))
    N = np.array(list(sizes.values()), dtype=float)
    imp = 1 - E / E.sum()
    d = (imp - imp.min()) / (imp.max() - imp.min()) * 2 * beta
    expected = (s * N + (d.mean() - d) * N.mean()) / N
    np.testing.assert_allclose(list(got.values()), expected, atol=1e-12)
    # the raw mapping already keeps the pruned-weight count
    assert weighted_mean(got, sizes) == pytest.approx(s, abs=1e-12)


@pytest.mark.parametrize("spread", [0.0, 0.07, 0.15, 0.3, 0.6])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("higher_is_important", [True, False])
def test_finalize_keeps_the_exact_weighted_mean_within_bounds(
    spread: float, target: float, higher_is_important: bool
) -> None:
    sizes = projection_sizes()
    scores = Scores(random_scores(list(sizes), seed=3), higher_is_important, spread)
    raw = map_scores(scores, sizes, target)
    final = finalize(raw, sizes, target)
    values = np.array(list(final.values()))
    assert values.min() >= 0.0 and values.max() <= MAX_SPARSITY
    total = sum(sizes.values())
    mean = sum(final[n] * sizes[n] for n in final) / total
    assert abs(mean - target) <= 1e-4
    if min(raw.values()) >= 0.0 and max(raw.values()) <= MAX_SPARSITY:
        assert final == pytest.approx(raw, abs=1e-12)


def test_large_spread_clips_and_redistributes() -> None:
    sizes = projection_sizes()
    scores = Scores(random_scores(list(sizes), seed=4), higher_is_important=False, spread=0.3)
    raw = map_scores(scores, sizes, 0.7)
    assert min(raw.values()) < 0.0 and max(raw.values()) > MAX_SPARSITY  # the case this test is about
    final = finalize(raw, sizes, 0.7)
    for n in raw:
        if raw[n] < 0.0:
            assert final[n] == 0.0
        elif raw[n] > MAX_SPARSITY:
            assert final[n] == MAX_SPARSITY
    free = [n for n in raw if 0.0 < final[n] < MAX_SPARSITY]
    assert free
    # the free units all moved by the same amount (spread by parameter count)
    shifts = {round(final[n] - raw[n], 9) for n in free}
    assert len(shifts) == 1
    assert sum(final[n] * sizes[n] for n in final) / sum(sizes.values()) == pytest.approx(0.7, abs=1e-4)


def test_units_pinned_low_are_freed_when_the_others_are_saturated() -> None:
    sizes = {"a": 1, "b": 1, "c": 1}
    final = finalize({"a": -0.3, "b": 1.5, "c": 1.5}, sizes, 0.9)
    assert final == pytest.approx({"a": 0.72, "b": 0.99, "c": 0.99})
    final = finalize({"a": -0.5, "b": -0.5, "c": 1.3}, sizes, 0.05)
    assert final == pytest.approx({"a": 0.0, "b": 0.0, "c": 0.15})


@pytest.mark.parametrize("higher_is_important", [True, False])
def test_uniform_scores_give_the_target_everywhere(higher_is_important: bool) -> None:
    sizes = projection_sizes()
    scores = Scores(dict.fromkeys(sizes, 2.5), higher_is_important, spread=0.15)
    final = finalize(map_scores(scores, sizes, 0.7), sizes, 0.7)
    assert all(v == pytest.approx(0.7, abs=1e-12) for v in final.values())
    zero_spread = Scores(random_scores(list(sizes), seed=5), higher_is_important, spread=0.0)
    final = finalize(map_scores(zero_spread, sizes, 0.6), sizes, 0.6)
    assert all(v == pytest.approx(0.6, abs=1e-12) for v in final.values())


@pytest.mark.parametrize("target", [0.995, 1.0, -0.1])
def test_impossible_target_raises(target: float) -> None:
    sizes = projection_sizes()
    scores = Scores(random_scores(list(sizes), seed=6), higher_is_important=False, spread=0.07)
    with pytest.raises(LsafError, match="cannot reach the target"):
        finalize(map_scores(scores, sizes, target), sizes, target)


def test_direction_of_the_mapping() -> None:
    sizes = dict.fromkeys(["a", "b", "c"], 100)
    values = {"a": 1.0, "b": 2.0, "c": 3.0}
    more_is_pruned = map_scores(Scores(values, False, 0.1), sizes, 0.5)
    assert more_is_pruned["a"] < more_is_pruned["b"] < more_is_pruned["c"]
    assert more_is_pruned["c"] - more_is_pruned["a"] == pytest.approx(0.2)
    more_is_kept = map_scores(Scores(values, True, 0.1), sizes, 0.5)
    assert more_is_kept["a"] > more_is_kept["b"] > more_is_kept["c"]

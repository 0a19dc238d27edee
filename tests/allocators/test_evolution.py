"""EvoPress-style search: exact budget per mutation, determinism, resume, and the brute-force optimum."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Sequence

import pytest

from lsa_framework.allocators.evolution import (
    FitnessFn,
    LevelDatabase,
    SearchConfig,
    SearchState,
    default_step,
    evolve,
    levels_from_sparsities,
    mutate,
    start,
    step_database,
)
from lsa_framework.errors import BadInputError

SIZES = {"a": 300, "b": 1200, "c": 700, "d": 450, "e": 900, "f": 500}


def _synthetic(database: LevelDatabase, seed: int, coupling: float = 0.3) -> tuple[list[list[float]], float]:
    """A separable cost per (unit, level) plus a pairwise interaction between neighbouring units."""
    rng = random.Random(seed)
    slopes = [rng.uniform(-1.0, 1.0) for _ in database.counts]  # some units want more sparsity, some less
    cost = [
        [rng.uniform(0.0, 0.5) + slope * i + 0.05 * i * i for i in range(len(c))]
        for c, slope in zip(database.counts, slopes, strict=True)
    ]
    return cost, coupling


def _fitness_value(levels: Sequence[int], cost: list[list[float]], coupling: float) -> float:
    separable = sum(cost[u][i] for u, i in enumerate(levels))
    interaction = sum(coupling * (levels[u] - levels[u + 1]) ** 2 for u in range(len(levels) - 1)) / 10
    return separable + interaction


def _brute_force(database: LevelDatabase, cost: list[list[float]], coupling: float) -> tuple[float, list[int]]:
    best: tuple[float, list[int]] = (float("inf"), [])
    for combo in itertools.product(*(range(len(c)) for c in database.counts)):
        if database.total(combo) == database.budget:
            value = _fitness_value(combo, cost, coupling)
            if value < best[0]:
                best = (value, list(combo))
    return best


def test_step_database_is_exact_and_evopress_shaped() -> None:
    database, uniform = step_database(SIZES, 0.7, step=40, num_levels=3)
    assert database.budget == round(0.7 * sum(SIZES.values()))
    assert database.total(uniform) == database.budget
    for name, size, counts, mid in zip(database.names, database.sizes, database.counts, uniform, strict=True):
        assert all(b - a == 40 for a, b in itertools.pairwise(counts))
        assert abs(counts[mid] - 0.7 * size) < 1
        assert counts[0] >= 0 and counts[-1] <= 0.99 * size, name
    assert default_step(list(SIZES.values()), 0.7, 8) == int(0.5 * 0.3 / 8 * 300)


@pytest.mark.parametrize("seed", range(5))
def test_every_mutation_keeps_the_exact_budget(seed: int) -> None:
    database, uniform = step_database(SIZES, 0.6, step=35, num_levels=4)
    rng = random.Random(seed)
    parent = uniform
    changed = 0
    for _ in range(400):
        child = mutate(database, parent, rng)
        database.check(child)  # valid levels, exact budget
        assert sum(abs(a - b) for a, b in zip(child, parent, strict=True)) <= 2 * 3  # at most three switches
        changed += child != parent  # two switches may cancel; the search redraws such offspring
        parent = child
    assert changed > 300


def test_mixed_steps_only_switch_between_equal_steps() -> None:
    # a shared sparsity grid (0.5, 0.6, 0.7, 0.8) on units of two sizes: steps of 10 and of 30 weights
    sizes = (100, 100, 300, 300)
    counts = tuple(tuple(round(s * n) for s in (0.5, 0.6, 0.7, 0.8)) for n in sizes)
    database = LevelDatabase(("a", "b", "c", "d"), sizes, counts, budget=70 + 70 + 210 + 210)
    rng = random.Random(0)
    parent = [2, 2, 2, 2]
    moved = set()
    for _ in range(300):
        child = mutate(database, parent, rng)
        database.check(child)
        # within each size class the levels sum to 4 (two units at 0.7 on average)
        assert child[0] + child[1] == 4 and child[2] + child[3] == 4
        moved |= {u for u in range(4) if child[u] != parent[u]}
        parent = child
    assert moved == {0, 1, 2, 3}


def _run(database: LevelDatabase, initial: list[int], config: SearchConfig, generations: int) -> SearchState:
    cost, coupling = _synthetic(database, seed=1)
    return evolve(
        database, start(database, initial, config), lambda lv, t, s: _fitness_value(lv, cost, coupling), generations
    )


def test_deterministic_per_seed() -> None:
    database, uniform = step_database(SIZES, 0.7, step=30, num_levels=3)
    config = SearchConfig(offspring=8, survivors=(3, 1), tokens=(10, 100), seed=4)
    cost, coupling = _synthetic(database, seed=1)
    runs = []
    for seed in (4, 4, 5):
        evaluated: list[list[int]] = []

        def fitness(levels: Sequence[int], tokens: int, sample: int, log: list[list[int]] = evaluated) -> float:
            log.append(list(levels))
            return _fitness_value(levels, cost, coupling)

        config = SearchConfig(offspring=8, survivors=(3, 1), tokens=(10, 100), seed=seed)
        runs.append((_without_time(evolve(database, start(database, uniform, config), fitness, 6)), evaluated))
    assert runs[0] == runs[1]
    assert runs[0][1] != runs[2][1]  # another seed draws other offspring


def _without_time(state: SearchState) -> dict[str, object]:
    data = SearchState.from_json(state.to_json()).__dict__.copy()
    data.pop("seconds")
    return data


def _noisy_fitness(cost: list[list[float]], coupling: float) -> tuple[list[tuple[int, int]], FitnessFn]:
    """Noise that shrinks with the token count and depends on the sample, recording every call."""
    calls: list[tuple[int, int]] = []

    def fitness(levels: Sequence[int], tokens: int, sample: int) -> float:
        calls.append((tokens, sample))
        digest = hashlib.sha256(f"{list(levels)}/{sample}".encode()).digest()
        noise = int.from_bytes(digest[:4], "big") / 2**32 - 0.5
        return _fitness_value(levels, cost, coupling) + noise / tokens**0.5

    return calls, fitness


def test_resume_from_json_equals_an_uninterrupted_search() -> None:
    database, uniform = step_database(SIZES, 0.7, step=30, num_levels=3)
    cost, coupling = _synthetic(database, seed=2)
    config = SearchConfig(offspring=6, survivors=(3, 2, 1), tokens=(4, 16, 64), seed=9)
    _, fitness = _noisy_fitness(cost, coupling)
    whole = evolve(database, start(database, uniform, config), fitness, generations=8)
    saved: list[str] = []
    part = evolve(
        database, start(database, uniform, config), fitness, 3, on_generation=lambda s: saved.append(s.to_json())
    )
    assert len(saved) == 3 and part.generation == 3
    resumed = evolve(database, SearchState.from_json(saved[-1]), fitness, generations=8)
    assert _without_time(resumed) == _without_time(whole)


def test_multi_step_selection_and_elitism() -> None:
    database, uniform = step_database(SIZES, 0.7, step=30, num_levels=3)
    cost, coupling = _synthetic(database, seed=3)
    config = SearchConfig(offspring=10, survivors=(4, 2, 1), tokens=(8, 32, 128), seed=1)
    calls, fitness = _noisy_fitness(cost, coupling)
    state = evolve(database, start(database, uniform, config), fitness, generations=2)
    per_generation = len(calls) // 2
    assert per_generation == 10 + 4 + (2 + 1)  # the parent joins the last stage
    first = calls[:per_generation]
    assert [t for t, _ in first] == [8] * 10 + [32] * 4 + [128] * 3
    samples = [s for _, s in first]
    assert len(set(samples[:10])) == 1 and len(set(samples[10:14])) == 1 and len(set(samples[14:])) == 1
    assert len(set(samples)) == 3 and samples[0] != calls[per_generation][1]  # fresh windows per stage and generation
    assert state.evaluations == len(calls) and state.tokens == sum(t for t, _ in calls)
    # elitism: with a noise-free fitness the parent's value never gets worse
    values = [h["fitness"] for h in _run(database, uniform, config, 10).history]
    assert all(b <= a for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("seed", range(4))
def test_finds_the_brute_force_optimum(seed: int) -> None:
    database, uniform = step_database(SIZES, 0.7, step=40, num_levels=2)  # 5 levels a unit, 6 units
    cost, coupling = _synthetic(database, seed=10 + seed)
    best_value, best_levels = _brute_force(database, cost, coupling)
    config = SearchConfig(offspring=12, survivors=(3, 1), tokens=(1, 1), seed=seed)
    state = evolve(database, start(database, uniform, config), lambda lv, t, s: _fitness_value(lv, cost, coupling), 40)
    assert state.fitness == pytest.approx(best_value)
    assert state.parent == best_levels


def test_levels_from_sparsities_hits_the_budget() -> None:
    database, _ = step_database(SIZES, 0.7, step=30, num_levels=4)
    heuristic = {"a": 0.62, "b": 0.74, "c": 0.69, "d": 0.66, "e": 0.71, "f": 0.68}  # mean ≈ 0.7, off the grid
    levels = levels_from_sparsities(database, heuristic)
    database.check(levels)
    for n, c, i, size in zip(database.names, database.counts, levels, database.sizes, strict=True):
        assert abs(c[i] - heuristic[n] * size) <= 2 * 30  # within two steps of the wish


def test_wall_time_budget_callback_and_refusals() -> None:
    database, uniform = step_database(SIZES, 0.7, step=30, num_levels=3)
    state = start(database, uniform, SearchConfig(offspring=4, survivors=(1,), tokens=(1,)))
    seen: list[int] = []
    evolve(database, state, lambda lv, t, s: 0.0, seconds=0.0, on_generation=lambda s: seen.append(s.generation))
    assert state.generation == 0 and seen == []
    evolve(database, state, lambda lv, t, s: 0.0, generations=3, on_generation=lambda s: seen.append(s.generation))
    assert seen == [1, 2, 3]
    other, _ = step_database(SIZES, 0.6, step=30, num_levels=3)
    with pytest.raises(BadInputError):
        evolve(other, state, lambda lv, t, s: 0.0, generations=4)
    with pytest.raises(BadInputError):
        evolve(database, state, lambda lv, t, s: 0.0)
    with pytest.raises(BadInputError):
        start(database, [0] * len(uniform))  # misses the budget
    with pytest.raises(BadInputError):
        SearchConfig(survivors=(4, 2), tokens=(1, 2))

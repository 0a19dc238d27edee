"""Rate–distortion allocation: the greedy hull solution against brute force over the same feasible set."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from lsa_framework.allocators.budget import RDAllocation, allocate_rd, lower_convex_hull
from lsa_framework.errors import BadInputError


def _brute_force(curves: dict[str, list[float]], sizes: dict[str, int], grid: list[float], target: float) -> float:
    """min Σ e over: all units on grid levels, or all but one, which mixes two of its levels (chord error)."""
    names = list(curves)
    budget = target * sum(sizes.values())
    best = float("inf")
    tol = 1e-9 * sum(sizes.values())
    for combo in itertools.product(range(len(grid)), repeat=len(names)):
        if abs(sum(sizes[n] * grid[i] for n, i in zip(names, combo, strict=True)) - budget) <= tol:
            best = min(best, sum(curves[n][i] for n, i in zip(names, combo, strict=True)))
    for u in names:
        others = [n for n in names if n != u]
        for a, b in itertools.combinations(range(len(grid)), 2):
            for combo in itertools.product(range(len(grid)), repeat=len(others)):
                rest = budget - sum(sizes[n] * grid[i] for n, i in zip(others, combo, strict=True))
                s = rest / sizes[u]
                if grid[a] - 1e-12 <= s <= grid[b] + 1e-12:
                    theta = (s - grid[a]) / (grid[b] - grid[a])
                    value = sum(curves[n][i] for n, i in zip(others, combo, strict=True))
                    best = min(best, value + curves[u][a] + theta * (curves[u][b] - curves[u][a]))
    return best


def _problem(seed: int, kind: str) -> tuple[dict[str, list[float]], dict[str, int], list[float], float]:
    rng = random.Random(seed)
    units = rng.choice([3, 4])
    levels = rng.choice([3, 4, 5])
    grid = sorted(rng.sample([i / 20 for i in range(20)], levels))
    sizes = {f"u{i}": rng.randint(2, 40) for i in range(units)}
    curves = {}
    for n in sizes:
        if kind == "monotone":
            steps = [rng.uniform(0.0, 3.0) for _ in grid]
            curves[n] = [sum(steps[: i + 1]) for i in range(levels)]
        elif kind == "convex":
            curves[n] = [rng.uniform(0.5, 3.0) * (s * 4) ** 2 for s in grid]
        else:  # arbitrary, non-monotone
            curves[n] = [rng.uniform(0.0, 5.0) for _ in grid]
    total = sum(sizes.values())
    low = sum(sizes[n] * grid[0] for n in sizes) / total
    high = sum(sizes[n] * grid[-1] for n in sizes) / total
    return curves, sizes, grid, rng.uniform(low, high)


def _objective(result: RDAllocation, curves: dict[str, list[float]]) -> float:
    value = 0.0
    for n, i in result.levels.items():
        value += curves[n][i]
    if result.fractional is not None:
        n = result.fractional
        assert result.upper is not None
        value += result.theta * (curves[n][result.upper] - curves[n][result.levels[n]])
    return value


@pytest.mark.parametrize("kind", ["monotone", "convex", "non-monotone"])
@pytest.mark.parametrize("seed", range(12))
def test_equals_brute_force_and_mean_is_exact(seed: int, kind: str) -> None:
    curves, sizes, grid, target = _problem(seed, kind)
    result = allocate_rd(curves, sizes, grid, target)
    assert result.error == pytest.approx(_brute_force(curves, sizes, grid, target), rel=1e-9, abs=1e-12)
    assert _objective(result, curves) == pytest.approx(result.error, rel=1e-12, abs=1e-12)
    total = sum(sizes.values())
    assert sum(result.sparsities[n] * sizes[n] for n in sizes) / total == pytest.approx(target, abs=1e-12)
    # every unit but the fractional one sits on a grid level
    for n, s in result.sparsities.items():
        if n != result.fractional:
            assert s == pytest.approx(grid[result.levels[n]], abs=1e-12)


def test_target_on_a_vertex_takes_no_fraction() -> None:
    curves = {"a": [0.0, 0.5, 4.0], "b": [0.0, 1.0, 3.0]}
    sizes = {"a": 10, "b": 30}
    grid = [0.0, 0.5, 0.9]
    # slopes per pruned weight: b 1/15 then 2/12, a 0.5/5 then 3.5/4; budget 20 = b's 15 + a's 5
    result = allocate_rd(curves, sizes, grid, 0.5)
    assert result.fractional is None
    assert result.sparsities == pytest.approx({"a": 0.5, "b": 0.5})
    assert result.error == pytest.approx(1.5)
    assert result.multiplier == pytest.approx(0.1)


def test_a_non_convex_curve_is_bridged_by_its_hull() -> None:
    # b's middle point lies above its chord, so b jumps 0 → 0.9 along the chord (slope 3/27)
    curves = {"a": [0.0, 1.0, 4.0], "b": [0.0, 2.0, 3.0]}
    result = allocate_rd(curves, {"a": 10, "b": 30}, [0.0, 0.5, 0.9], 0.5)
    assert (result.fractional, result.levels["b"], result.upper) == ("b", 0, 2)
    assert result.sparsities == pytest.approx({"a": 0.0, "b": 2 / 3})
    assert result.error == pytest.approx(20 * 3 / 27)


def test_negative_slopes_are_taken_first() -> None:
    # unit b's error drops when pruned more: at the same budget it should take the extra sparsity
    curves = {"a": [0.0, 1.0, 2.0], "b": [1.0, 0.5, 0.25]}
    sizes = {"a": 10, "b": 10}
    result = allocate_rd(curves, sizes, [0.1, 0.5, 0.9], 0.5)
    assert result.sparsities == pytest.approx({"a": 0.1, "b": 0.9})
    assert result.multiplier < 0


def test_tensor_curves_and_bad_input() -> None:
    curves = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 3.0])}
    result = allocate_rd(curves, {"a": 1, "b": 1}, [0.2, 0.8], 0.5)
    assert result.sparsities == pytest.approx({"a": 0.8, "b": 0.2})
    for grid, target in (([0.2, 0.8], 0.9), ([0.8, 0.2], 0.5), ([0.2, 1.0], 0.5)):
        with pytest.raises(BadInputError):
            allocate_rd(curves, {"a": 1, "b": 1}, grid, target)
    with pytest.raises(BadInputError):
        allocate_rd({"a": [0.0, float("nan")]}, {"a": 1}, [0.2, 0.8], 0.5)


@pytest.mark.parametrize("seed", range(20))
def test_lower_convex_hull_against_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    x = sorted(rng.sample(range(100), 7))
    y = [float(rng.randint(0, 6)) for _ in x]  # small integers: collinear and equal points happen
    hull = lower_convex_hull([float(v) for v in x], y)
    expected = [0]
    for i in range(1, len(x) - 1):
        # a vertex lies strictly below every chord between a point on its left and one on its right
        below = all(
            y[i] < y[j] + (y[k] - y[j]) * (x[i] - x[j]) / (x[k] - x[j]) for j in range(i) for k in range(i + 1, len(x))
        )
        if below:
            expected.append(i)
    expected.append(len(x) - 1)
    assert hull == expected

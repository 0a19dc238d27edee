"""``--scorer evo``: the search keeps the exact pruned-weight budget for every candidate it evaluates,
is deterministic for a seed, and a search resumed from its saved state (also an interrupted ``lsaf run``)
ends exactly where an uninterrupted one does; end to end at every granularity with the exact mean."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lsa_framework.allocators import evolution
from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run
from lsa_framework.pruners.masks import exact_count
from lsa_framework.report.markdown import render_markdown
from lsa_framework.scorers.evo import EvoOptions, EvoScorer
from lsa_framework.types import Scores, SearchContext, Unit

SIZES = {"a": 4000, "b": 4000, "c": 12000, "d": 2000, "e": 6000}
BEST = {"a": 0.5, "b": 0.7, "c": 0.65, "d": 0.3, "e": 0.55}
TARGET = 0.6


def _quadratic(sparsities: dict[str, float]) -> float:
    return sum(SIZES[u] * (sparsities[u] - BEST[u]) ** 2 for u in SIZES)


def _context(tmp_path: Path | None, seen: list[dict[str, float]], resume: bool = False) -> SearchContext:
    """A toy problem: the fitness is a fixed quadratic in the sparsities plus seed-dependent noise."""

    def fitness(sparsities, tokens, sample_seed):
        seen.append(dict(sparsities))
        return _quadratic(sparsities) / 1e4 + random.Random(sample_seed * 7919 + tokens).random() * 1e-3

    return SearchContext(
        units=[Unit(name, i, ()) for i, name in enumerate(SIZES)],
        sizes=SIZES,
        target=TARGET,
        start=dict.fromkeys(SIZES, TARGET),
        scores=Scores(dict.fromkeys(SIZES, 1.0), higher_is_important=False, spread=0.1),
        fitness=fitness,
        allocate=lambda scores: dict.fromkeys(SIZES, TARGET),
        seed=3,
        state_file=None if tmp_path is None else tmp_path / "search.json",
        resume=resume,
    )


def _search(generations: int, tmp_path: Path | None = None, resume: bool = False, **options):
    seen: list[dict[str, float]] = []
    context = _context(tmp_path, seen, resume)
    opts = EvoOptions(generations=generations, offspring=6, survivors=[3, 1], tokens=[16, 64], step=200, **options)
    return EvoScorer(opts).search(context), seen, context.record


def test_every_candidate_keeps_the_exact_budget_and_the_search_improves() -> None:
    found, seen, record = _search(12)
    budget = exact_count(sum(SIZES.values()), TARGET)
    assert len(seen) > 12 * 6
    for candidate in seen:  # the start candidates and every offspring
        counts = [candidate[u] * SIZES[u] for u in SIZES]
        assert all(abs(c - round(c)) < 1e-6 for c in counts)
        assert sum(round(c) for c in counts) == budget
    assert record["generations"] == 12 and len(record["history"]) == 12
    assert _quadratic(found) < _quadratic(dict.fromkeys(SIZES, TARGET))


def test_the_allocation_found_is_measured_on_the_start_windows() -> None:
    """found_fitness and start_fitness share their windows, so the toy's window noise cancels in the gap."""
    found, _, record = _search(12)
    start = record["start_fitness"][record["start"]]
    uniform = dict.fromkeys(SIZES, TARGET)  # every start candidate of the toy context is uniform
    gain = (_quadratic(found) - _quadratic(uniform)) / 1e4
    assert record["found_fitness"] - start == pytest.approx(gain, abs=1e-12)
    assert gain < 0
    _, _, unchanged = _search(0)
    assert unchanged["found_fitness"] == unchanged["start_fitness"][unchanged["start"]]


def test_a_given_start_is_measured_too() -> None:
    _, seen, record = _search(0, start="dlp")
    assert record["start"] == "dlp" and set(record["start_fitness"]) == {"dlp"}
    assert len(seen) == 2  # the given start and the allocation found, nothing else


def test_the_search_is_deterministic_for_a_seed() -> None:
    first, _, _ = _search(6)
    second, _, _ = _search(6)
    other, _, _ = _search(6, seed=11)
    assert first == second
    assert other != first


def test_a_resumed_search_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    straight, _, record = _search(8)
    _, _, partial = _search(3, tmp_path)  # stops after 3 generations, its state saved
    state = json.loads((tmp_path / "search.json").read_text())
    assert state["state"]["generation"] == 3
    resumed, seen, resumed_record = _search(8, tmp_path, resume=True)
    assert resumed == straight
    assert resumed_record["history"] == record["history"]
    # only the five missing generations were evaluated (the start was chosen and saved before), and
    # the allocation found, once on the start's windows
    assert len(seen) == record["evaluations"] - partial["evaluations"] + 1
    assert resumed_record["found_fitness"] == record["found_fitness"]


def test_an_interrupted_run_resumes_its_search(tiny_run_values, tmp_path: Path, monkeypatch) -> None:
    values = {**tiny_run_values, "scorer": "evo", "allocator": "layer", "sparsity": 0.7, "eval": ["sparsity"],
              "eval_opts": {}, "scorer_opts": {"generations": 3, "offspring": 3, "tokens": [32, 64]}}  # fmt: skip
    straight = run(build_config(values))
    calls = {"n": 0}
    real = evolution._generation

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evolution, "_generation", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(build_config({**values, "output": out}))
    partial = out.parent / f".{out.name}.partial" / "search.json"
    assert json.loads(partial.read_text())["state"]["generation"] == 2
    monkeypatch.setattr(evolution, "_generation", real)
    resumed = run(build_config({**values, "output": out, "resume": True}))
    assert [u.sparsity for u in resumed.units] == [u.sparsity for u in straight.units]
    assert resumed.allocation["search"]["history"] == straight.allocation["search"]["history"]
    assert resumed.mask_hashes == straight.mask_hashes


@pytest.mark.parametrize("allocator", ["layer", "block", "projection"])
def test_evo_end_to_end_keeps_the_target(allocator: str, tiny_run_values) -> None:
    values = {**tiny_run_values, "scorer": "evo", "allocator": allocator, "sparsity": 0.7,
              "scorer_opts": {"generations": 2, "offspring": 3, "tokens": [32, 64]}}  # fmt: skip
    result = run(build_config(values))
    total = sum(u.numel for u in result.units)
    assert sum(u.sparsity * u.numel for u in result.units) / total == pytest.approx(0.7, abs=1e-9)
    realised = sum((u.realised or 0.0) * u.numel for u in result.units) / total
    assert abs(realised - 0.7) * total <= 21 / 2 + 1  # 21 linears, each rounded to the nearest weight
    search = result.allocation["search"]
    assert search["generations"] == 2 and search["start"] in ("rd", "dlp", "uniform")
    assert set(search["start_fitness"]) == {"rd", "dlp", "uniform"}
    assert search["found_fitness"] >= 0.0  # a KL divergence of the model's own outputs
    report = render_markdown(result)  # the search's scalars, the start KLs flattened; the history left out
    assert f"| found_fitness | {search['found_fitness']:.5f} |" in report
    assert f"| start_fitness.uniform | {search['start_fitness']['uniform']:.5f} |" in report
    assert f"| start | {search['start']} |" in report and "| history |" not in report
    assert "search" in result.timings

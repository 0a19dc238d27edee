"""``seeds`` and ``baseline`` in ``lsaf bench``: one calibration (and scoring pass) per seed on one loaded
model, each seed's cell equal to a single run with that seed, and tables whose mean ± std and paired
differences equal a direct computation over the per-seed cells."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from lsa_framework.bench.grid import GridConfig, cells
from lsa_framework.bench.runner import BenchObserver, run_grid
from lsa_framework.bench.seeds import student_t_quantile
from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run


class Passes(BenchObserver):
    def __init__(self) -> None:
        self.passes: list[str] = []

    def start_pass(self, name: str, total: int) -> None:
        self.passes.append(name)


def _grid(tiny_run_values: dict) -> GridConfig:
    shared = {k: v for k, v in tiny_run_values.items() if k not in ("model", "eval")}
    return GridConfig(
        models=[tiny_run_values["model"]],
        scorers=["uniform", "dlp"],
        allocators=["layer"],
        pruners=["wanda"],
        sparsities=[0.7],
        seeds=[0, 1, 2],
        baseline="uniform",
        run={**shared, "eval": ["perplexity"]},
    )


def test_seed_cells_tables_and_paired_differences(tiny_run_values, tmp_path: Path) -> None:
    grid = _grid(tiny_run_values)
    assert [c.seed for c in cells(grid)] == [0, 0, 1, 1, 2, 2]
    observer = Passes()
    store = run_grid(grid, tmp_path / "bench", observer)
    assert observer.passes.count("scoring") == 3  # one dense pass per calibration seed

    model = tiny_run_values["model"]
    records = store.by_id()
    ppl = {(s, seed): records[f"{model}|{s}|layer|wanda|0.7|unstructured|seed={seed}"]["metrics"]["perplexity"]
           for s in ("uniform", "dlp") for seed in (0, 1, 2)}  # fmt: skip
    alone = run(build_config({**tiny_run_values, "eval": ["perplexity"], "scorer": "dlp", "sparsity": 0.7, "seed": 2}))
    assert ppl[("dlp", 2)] == pytest.approx(alone.metrics["perplexity"], rel=1e-9)
    assert len({ppl[("uniform", seed)] for seed in (0, 1, 2)}) == 3  # the seeds draw other windows

    table = (tmp_path / "bench" / "results.md").read_text()
    for scorer in ("uniform", "dlp"):
        values = [ppl[(scorer, seed)] for seed in (0, 1, 2)]
        text = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
        row = f"| wanda + {scorer} (layer) | "
        assert f"{row}{text} |" in table or f"{row}**{text}** |" in table

    diffs = [math.log(ppl[("dlp", seed)]) - math.log(ppl[("uniform", seed)]) for seed in (0, 1, 2)]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = student_t_quantile(0.975, 2) * sd / math.sqrt(3)
    expected = f"{100 * math.expm1(mean):+.1f}% (±{100 * math.expm1(half):.1f}%)" + (" ≈" if abs(mean) <= half else "")
    assert f"| wanda + dlp (layer) | {expected} |" in table
    assert (tmp_path / "bench" / "perplexity_vs_sparsity.png").stat().st_size > 0
    assert (tmp_path / "bench" / "sparsity_profiles.png").stat().st_size > 0


def test_seeds_and_run_seed_are_exclusive_and_baselines_must_be_scorers() -> None:
    with pytest.raises(ValueError, match=r"seeds axis or as run\.seed"):
        GridConfig(scorers=["uniform"], seeds=[0, 1], run={"seed": 3})
    with pytest.raises(ValueError, match="baseline"):
        GridConfig(scorers=["uniform", "dlp"], baseline=["lse"])
    with pytest.raises(ValueError, match="distinct"):
        GridConfig(seeds=[1, 1])

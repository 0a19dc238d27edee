"""lsaf bench on the tiny model: shared work, identical results to single runs, resume, tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lsa_framework.bench.grid import GridConfig, cells
from lsa_framework.bench.runner import BenchObserver, run_grid
from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run


@pytest.fixture
def grid(tiny_run_values) -> GridConfig:
    shared = {k: v for k, v in tiny_run_values.items() if k != "model"}
    return GridConfig(
        models=[tiny_run_values["model"]],
        scorers=["uniform", "lse"],
        allocators=["layer", "block"],
        pruners=["wanda"],
        sparsities=[0.5, 0.7],
        patterns=["unstructured", "2:4"],
        run=shared,
    )


class Recorder(BenchObserver):
    def __init__(self, stop_after: int | None = None) -> None:
        self.finished: list[str] = []
        self.passes: list[str] = []
        self.stop_after = stop_after

    def start_pass(self, name: str, total: int) -> None:
        self.passes.append(name)

    def cell_done(self, cell, seconds: float) -> None:
        self.finished.append(cell.id)
        if self.stop_after is not None and len(self.finished) >= self.stop_after:
            raise KeyboardInterrupt


def test_cells_collapse_nm_sparsities(grid: GridConfig):
    all_cells = cells(grid)
    # 2 scorers × 2 allocators × (2 sparsities unstructured + 1 for 2:4)
    assert len(all_cells) == 12
    assert {c.sparsity for c in all_cells if c.pattern == "2:4"} == {0.5}


def test_grid_shares_work_matches_single_runs_and_resumes(grid: GridConfig, tiny_run_values, tmp_path: Path):
    out = tmp_path / "bench"
    first = Recorder(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, out, first)
    assert first.passes.count("scoring") == 1  # one dense pass for every scorer × allocator
    saved = json.loads((out / "results.json").read_text())["cells"]
    assert [c["id"] for c in saved] == first.finished

    second = Recorder()
    store = run_grid(grid, out, second)
    assert set(second.finished).isdisjoint(first.finished)  # finished cells are never re-run
    assert len(store.records) == 12
    assert second.passes.count("scoring") == 0  # scores were saved with the first run

    records = store.by_id()
    # uniform gives the same allocation at every granularity: pruned once, reused
    uniform_block = records[f"{grid.models[0]}|uniform|block|wanda|0.7|unstructured"]
    assert uniform_block["reused_from"] == f"{grid.models[0]}|uniform|layer|wanda|0.7|unstructured"

    # a cell equals the same configuration run alone
    lse = records[f"{grid.models[0]}|lse|block|wanda|0.7|unstructured"]
    alone = run(build_config({**tiny_run_values, "scorer": "lse", "allocator": "block", "sparsity": 0.7}))
    assert lse["metrics"]["perplexity"] == pytest.approx(alone.metrics["perplexity"], rel=1e-6)
    assert lse["mask_sha256"] == alone.mask_hashes

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 12
    table = (out / "results.md").read_text()
    assert "| wanda + lse (block) |" in table and "perplexity" in table
    assert (out / "perplexity_vs_sparsity.png").stat().st_size > 0
    assert (out / "sparsity_profiles.png").stat().st_size > 0


@pytest.mark.slow
def test_ray_executor_gives_identical_results(tiny_run_values, tmp_path: Path):
    pytest.importorskip("ray")
    from lsa_framework.bench.ray_executor import run_grid_ray

    shared = {k: v for k, v in tiny_run_values.items() if k != "model"}
    grid = GridConfig(
        models=[tiny_run_values["model"]],
        scorers=["uniform", "owl"],
        allocators=["layer"],
        pruners=["wanda"],
        sparsities=[0.6],
        run=shared,
    )
    local = run_grid(grid, tmp_path / "local").records
    remote = run_grid_ray(grid, tmp_path / "ray").records
    assert set(local) == set(remote) and len(local) == 2
    for cell_id, record in local.items():
        assert remote[cell_id]["mask_sha256"] == record["mask_sha256"]
        assert remote[cell_id]["metrics"] == pytest.approx(record["metrics"], rel=1e-9)

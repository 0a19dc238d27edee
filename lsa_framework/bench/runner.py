"""Run a grid of cells, sharing every piece of work that is the same across cells.

    lsaf bench --config benchmarks/grids/paper_70.yaml --output benchmarks/results/paper_70

What is shared: each model is loaded once and its dense weights kept to restore between cells;
the calibration windows are drawn once per model; ONE dense pass per model gathers the union of the
statistics every scorer needs and scores every (scorer, allocator) pair; cells whose allocation
comes out identical (e.g. ``uniform`` at every granularity) are pruned and evaluated once.
Finished cells and scores are saved after each step, so an interrupted grid resumes where it
stopped and never re-runs a finished cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lsa_framework.bench.grid import Cell, GridConfig, cell_config, cells
from lsa_framework.config import RunConfig
from lsa_framework.engine.pipeline import (
    Observer,
    Plugins,
    ScoringJob,
    allocate,
    calibration_ids,
    evaluate,
    prune_model,
    resolve_plugins,
    score_jobs,
    unit_records,
)
from lsa_framework.engine.sequential import Activations, capture_layer_inputs
from lsa_framework.model.layout import find_layout
from lsa_framework.model.loading import load_model
from lsa_framework.types import EvalContext, Layout


class BenchObserver(Observer):
    """Adds grid-level progress to the per-pass callbacks."""

    def start_grid(self, total: int, done: int) -> None:
        """``total`` cells, ``done`` of them already finished earlier."""

    def cell_done(self, cell: Cell, seconds: float) -> None:
        """One more cell finished."""


def _write_json_atomically(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide shared results from other users
    os.replace(tmp, path)


@dataclass
class ResultStore:
    """results.json (finished cells) and scores.json (dense-pass scores) of one output folder."""

    folder: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path) -> ResultStore:
        folder.mkdir(parents=True, exist_ok=True)
        store = cls(folder)
        if (folder / "results.json").is_file():
            store.records = {r["id"]: r for r in json.loads((folder / "results.json").read_text())["cells"]}
        if (folder / "scores.json").is_file():
            store.scores = json.loads((folder / "scores.json").read_text())
        return store

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["id"]] = record
        _write_json_atomically(self.folder / "results.json", {"cells": list(self.records.values())})

    def save_scores(self) -> None:
        _write_json_atomically(self.folder / "scores.json", self.scores)


@dataclass
class ModelSession:
    """A loaded model shared by all cells of that model."""

    config: RunConfig
    model: Any
    tokenizer: Any
    layout: Layout
    input_ids: torch.Tensor
    dense: dict[str, torch.Tensor]

    @classmethod
    def open(cls, config: RunConfig, plugins: Plugins) -> ModelSession:
        loaded = load_model(config.model, config.dtype)
        layout = find_layout(loaded.model)
        input_ids = calibration_ids(config, plugins.dataset, loaded.tokenizer, loaded.model)
        dense = {info.name: info.module.weight.detach().clone() for info in layout.all_linears()}
        return cls(config, loaded.model, loaded.tokenizer, layout, input_ids, dense)

    def calibrate(self) -> Activations:
        return capture_layer_inputs(
            self.model, self.layout.layers[0], self.input_ids, self.config.batch_size, self.config.torch_device
        )

    def restore(self) -> None:
        with torch.no_grad():
            for info in self.layout.all_linears():
                info.module.weight.copy_(self.dense[info.name])


def _prune_key(linear_sparsity: dict[str, float], config: RunConfig) -> str:
    """Identical allocation + pruner + pattern + evaluation ⇒ identical cell results."""
    payload = json.dumps(
        {
            "sparsity": {k: round(v, 12) for k, v in sorted(linear_sparsity.items())},
            "pruner": config.pruner,
            "pruner_opts": config.pruner_opts,
            "pattern": config.pattern,
            "eval": config.eval,
            "eval_opts": config.eval_opts,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _score_model(
    session: ModelSession, model_cells: list[Cell], plugins: dict[str, Plugins], store: ResultStore, obs: Observer
) -> dict[str, dict[str, float]]:
    """Scores of every (scorer, allocator) pair of this model's cells, from one dense pass."""
    scorer_of: dict[str, Any] = {}
    allocator_of: dict[str, Any] = {}
    for cell in model_cells:
        scorer_of.setdefault(cell.scorer, plugins[cell.id].scorer)  # one instance per scorer: shared caches
        allocator_of.setdefault(cell.allocator, plugins[cell.id].allocator)
    cached = store.scores.setdefault(session.config.model, {})
    pairs = sorted({(c.scorer, c.allocator) for c in model_cells})
    jobs = [
        ScoringJob(f"{s}/{a}", scorer_of[s], allocator_of[a].call("units", session.layout))
        for s, a in pairs
        if f"{s}/{a}" not in cached
    ]
    if jobs:
        cached.update(score_jobs(jobs, session.layout, session.calibrate, obs))
        store.save_scores()
    return cached


@dataclass
class CellPlan:
    """A cell with its allocation done: what to prune, and the record to fill."""

    cell: Cell
    config: RunConfig
    plugins: Plugins
    record: dict[str, Any]
    units: list[Any]
    unit_values: dict[str, float]
    sparsities: dict[str, float]
    linear_sparsity: dict[str, float]

    @property
    def key(self) -> str:
        return str(self.record["prune_key"])


def plan_cell(cell: Cell, config: RunConfig, plugins: Plugins, layout: Layout, values: dict) -> CellPlan:
    """Score → sparsity for one cell (cheap: the scores come from the shared dense pass)."""
    units = plugins.allocator.call("units", layout)
    unit_values = values[f"{cell.scorer}/{cell.allocator}"]
    granularity = getattr(plugins.allocator.instance, "granularity", "layer")
    scores = plugins.scorer.call("finish", unit_values, config.target_sparsity, granularity)
    sparsities, note = allocate(plugins.allocator, units, scores, config.target_sparsity, config.parsed_pattern)
    linear_sparsity = {info.name: sparsities[u.name] for u in units for info in u.linears}
    record: dict[str, Any] = {
        "id": cell.id,
        "model": cell.model,
        "scorer": cell.scorer,
        "allocator": cell.allocator,
        "pruner": cell.pruner,
        "sparsity": cell.sparsity,
        "pattern": cell.pattern,
        "method": cell.method,
        "prune_key": _prune_key(linear_sparsity, config),
        "note": note,
    }
    return CellPlan(cell, config, plugins, record, units, unit_values, sparsities, linear_sparsity)


def execute_cell(session: ModelSession, plan: CellPlan, obs: Observer) -> dict[str, Any]:
    """Prune the dense model as planned and evaluate it; returns what the record lacks."""
    started = time.perf_counter()
    session.restore()
    hashes = prune_model(
        session.layout, session.calibrate, plan.plugins.pruner, plan.linear_sparsity, plan.config.parsed_pattern, obs
    )
    records = unit_records(session.layout, plan.units, plan.unit_values, plan.sparsities)
    context = EvalContext(config=plan.config, dataset=plan.plugins.dataset.instance, layout=session.layout)
    metrics = evaluate(plan.plugins.evaluators, session.model, session.tokenizer, context, obs)
    return {
        "metrics": metrics,
        "mask_sha256": hashes,
        "units": [vars(r) for r in records],
        "reused_from": None,
        "seconds": round(time.perf_counter() - started, 3),
    }


def reuse_outcome(plan: CellPlan, previous: dict[str, Any]) -> dict[str, Any]:
    """A cell whose allocation equals a finished one's takes its metrics and masks."""
    return {
        "metrics": previous["metrics"],
        "mask_sha256": previous["mask_sha256"],
        "units": _allocated_units(plan.units, plan.unit_values, plan.sparsities),
        "reused_from": previous["id"],
        "seconds": 0.0,
    }


#: Runs the unique plans of one model and yields (plan, outcome) as they finish.
Executor = Callable[[ModelSession, list[CellPlan], Observer], Iterator[tuple[CellPlan, dict[str, Any]]]]


def local_executor(session: ModelSession, plans: list[CellPlan], obs: Observer) -> Iterator[tuple[CellPlan, dict]]:
    for plan in plans:
        yield plan, execute_cell(session, plan, obs)


def run_grid(
    grid: GridConfig, output: Path, observer: BenchObserver | None = None, executor: Executor = local_executor
) -> ResultStore:
    """Run every unfinished cell of ``grid``; results accumulate in ``output``."""
    from lsa_framework.bench.tables import write_tables

    obs = observer or BenchObserver()
    all_cells = cells(grid)
    configs = {c.id: cell_config(grid, c) for c in all_cells}
    plugins = {c.id: resolve_plugins(configs[c.id]) for c in all_cells}  # every name and option checked first
    store = ResultStore.open(output)
    todo = [c for c in all_cells if c.id not in store.records]
    obs.start_grid(len(all_cells), len(all_cells) - len(todo))

    def finish(plan: CellPlan, outcome: dict[str, Any], shared: dict[str, float]) -> None:
        store.add({**plan.record, **outcome, "shared_seconds": shared})
        write_tables(store, output)
        obs.cell_done(plan.cell, outcome["seconds"])

    for model in grid.models:
        model_cells = [c for c in todo if c.model == model]
        if not model_cells:
            continue
        first = model_cells[0]
        started = time.perf_counter()
        session = ModelSession.open(configs[first.id], plugins[first.id])
        shared = {"load_and_calibrate": round(time.perf_counter() - started, 2)}
        started = time.perf_counter()
        values = _score_model(session, model_cells, plugins, store, obs)
        shared["scoring"] = round(time.perf_counter() - started, 2)
        plans = [plan_cell(c, configs[c.id], plugins[c.id], session.layout, values) for c in model_cells]
        done_by_key = {r["prune_key"]: r for r in store.records.values() if "prune_key" in r}
        waiting: dict[str, list[CellPlan]] = {}
        for plan in plans:
            if plan.key in done_by_key:
                finish(plan, reuse_outcome(plan, done_by_key[plan.key]), shared)
            else:
                waiting.setdefault(plan.key, []).append(plan)
        for plan, outcome in executor(session, [group[0] for group in waiting.values()], obs):
            finish(plan, outcome, shared)
            for twin in waiting[plan.key][1:]:
                finish(twin, reuse_outcome(twin, {**plan.record, **outcome}), shared)
    write_tables(store, output)
    return store


def _allocated_units(units: list[Any], values: dict[str, float], sparsities: dict[str, float]) -> list:
    """Unit records of a cell that reused another's pruning: allocated sparsity, nothing realised."""
    return [
        {
            "name": u.name,
            "layer": u.layer,
            "numel": u.numel,
            "score": values[u.name],
            "sparsity": sparsities[u.name],
            "realised": None,
        }
        for u in units
    ]

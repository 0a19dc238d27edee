"""Run a grid of cells on the session engine, sharing every piece of work that is the same across cells.

    lsaf bench --config benchmarks/grids/paper_70.yaml --output benchmarks/results/paper_70

One :class:`~lsa_framework.engine.session.Session` per model: the model is loaded once (and its dense
weights restored between cells), the calibration windows drawn once, ONE dense pass gathers the union
of the statistics every scorer needs (plus the pruners', for ``pipeline: basic``) and scores every
(scorer, allocator) pair; each cell then runs the session's own allocate → prune → evaluate stages,
exactly those of ``lsaf run``, with the same hooks; cells whose allocation comes out identical (e.g.
``uniform`` at every granularity) are pruned and evaluated once. Every ``RunConfig`` field in the grid's
``run:`` is honoured as ``lsaf run`` honours it (``offload``, ``pipeline``, ``device``, ``dtype``,
``threads``, and ``resume``: per-layer checkpoints of each cell in the bench folder).

A cell's identity is every setting that changes its result, the model's content hash included, so a
grid whose ``run:`` settings (or weights) changed runs new cells and never reuses stale ones. Finished
cells and scores are saved as they come, so an interrupted grid resumes where it stopped; a cell that
fails is recorded with its error sentence and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsa_framework.bench.grid import Cell, GridConfig, cell_config, cells
from lsa_framework.config import RunConfig, plugin_options
from lsa_framework.engine.checkpoint import Checkpoint, fingerprint
from lsa_framework.engine.observer import Observer
from lsa_framework.engine.plugins import Plugins, resolve_plugins
from lsa_framework.engine.session import Allocation, KeptStats, ScoringJob, Session
from lsa_framework.errors import BadInputError, LsafError
from lsa_framework.model.loading import protected_paths, spec_digest
from lsa_framework.result import RunResult
from lsa_framework.storage.atomic import make_folder, temporary_sibling, write_json
from lsa_framework.storage.guard import (
    Protected,
    always_protected,
    check_protected,
    check_replaceable,
    check_writable,
    read_marker,
    resolve,
    write_marker,
)
from lsa_framework.storage.lock import output_lock
from lsa_framework.types import UnitScore

BENCH_KIND = "bench"
#: What a bench folder may hold besides the marker (written as cells finish).
BENCH_ENTRIES = ("results.json", "scores.json", "results.csv", "results.md", "*.png", "partial")


class BenchObserver(Observer):
    """Adds grid-level progress to the per-pass callbacks."""

    def start_grid(self, total: int, done: int) -> None:
        """``total`` cells, ``done`` of them already finished earlier."""

    def cell_done(self, cell: Cell, seconds: float) -> None:
        """One more cell finished."""


def open_output(output: Path, overwrite: bool, protected: list[Protected]) -> Path:
    """The bench folder, checked like a run's output; a bench folder lsaf wrote is resumed (or, with
    ``--overwrite``, emptied of what lsaf wrote there), any other non-empty folder refused."""
    target = resolve(output)
    check_protected(target, [*always_protected(), *protected])
    if target.exists() and not target.is_dir():
        raise BadInputError(f"--output {target} is a file; pass a folder path to --output.")
    if target.is_dir() and any(target.iterdir()):
        check_replaceable(target, BENCH_KIND)
        if overwrite:
            marker = read_marker(target)
            assert marker is not None
            for entry in target.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)  # lsaf's own: check_replaceable found nothing else in the folder
                else:
                    entry.unlink(missing_ok=True)
    check_writable(target)
    make_folder(target)
    write_marker(target, BENCH_KIND, extra=BENCH_ENTRIES)
    return target


@dataclass
class ResultStore:
    """results.json (finished cells, by their identity) and scores.json (dense-pass scores, by theirs)."""

    folder: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, dict[str, UnitScore]] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path) -> ResultStore:
        store = cls(folder)
        results, scores = folder / "results.json", folder / "scores.json"
        try:
            if results.is_file():
                saved = json.loads(results.read_text(encoding="utf-8"))["cells"]
                store.records = {r["key"]: r for r in saved if "key" in r and "error" not in r}
            if scores.is_file():
                data = json.loads(scores.read_text(encoding="utf-8"))
                store.scores = {k: v for k, v in data.items() if isinstance(v, dict) and k.startswith("scores-")}
        except (OSError, ValueError, KeyError, TypeError):
            raise BadInputError(
                f"The bench results in {folder} are damaged (results.json or scores.json is not readable); "
                "rerun with --overwrite to start over."
            ) from None
        return store

    def by_id(self) -> dict[str, dict[str, Any]]:
        """The finished cells by their readable id (model|scorer|allocator|pruner|sparsity|pattern)."""
        return {r["id"]: r for r in self.records.values()}

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["key"]] = record
        write_json(self.folder / "results.json", {"cells": list(self.records.values())})

    def save_scores(self) -> None:
        write_json(self.folder / "scores.json", self.scores)


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: Settings of a cell that decide its pruning data: the model, the calibration windows and the pass.
DATA_SETTINGS = ("dtype", "calibration", "calibration_opts", "nsamples", "seqlen", "seed", "batch_size", "pipeline")


def _data_identity(config: RunConfig, model_sha256: str) -> dict[str, Any]:
    settings = config.model_dump(mode="json")
    return {"model": config.model, "model_sha256": model_sha256, **{k: settings[k] for k in DATA_SETTINGS}}


def cell_key(config: RunConfig, model_sha256: str) -> str:
    """A cell's identity: every setting that changes its result (a changed ``run:`` setting is a new cell)."""
    return "cell-" + _digest({"fingerprint": fingerprint(config), "eval": config.eval, "eval_opts": config.eval_opts,
                              **_data_identity(config, model_sha256)})  # fmt: skip


def scores_key(config: RunConfig, model_sha256: str) -> str:
    """The identity of one (scorer, allocator) pair's dense-pass scores.

    The options are the validated ones, defaults included: a scorer whose new version adds an option or
    changes a default (``rd``'s ``output_norms``) computes other scores, and must not reuse the old ones.
    """
    identity = _data_identity(config, model_sha256)
    identity.pop("pipeline")  # scores always come from the dense model
    unit = {
        "scorer": config.scorer,
        "scorer_opts": plugin_options("scorers", config.scorer, config.scorer_opts).model_dump(mode="json"),
        "allocator": config.allocator,
        "allocator_opts": plugin_options("allocators", config.allocator, config.allocator_opts).model_dump(mode="json"),
    }
    return "scores-" + _digest({**identity, **unit})


def _prune_key(linear_sparsity: dict[str, float], config: RunConfig, model_sha256: str) -> str:
    """Identical data + allocation + pruner + pattern + evaluation ⇒ identical cell results."""
    return _digest(
        {
            **_data_identity(config, model_sha256),
            "sparsity": {k: round(v, 12) for k, v in sorted(linear_sparsity.items())},
            "pruner": config.pruner,
            "pruner_opts": config.pruner_opts,
            "pattern": config.pattern,
            "eval": config.eval,
            "eval_opts": config.eval_opts,
        }
    )


@dataclass
class CellPlan:
    """A cell and its identity; after :meth:`allocate`, its allocation and the record to fill."""

    cell: Cell
    config: RunConfig
    plugins: Plugins
    model_sha256: str
    allocation: Allocation | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def cell_key(self) -> str:
        return cell_key(self.config, self.model_sha256)

    @property
    def scores_key(self) -> str:
        return scores_key(self.config, self.model_sha256)

    @property
    def key(self) -> str:
        return str(self.record["prune_key"])

    def allocate(self, session: Session, values: dict[str, dict[str, UnitScore]], output: Path | None = None) -> None:
        """Score → sparsity with the session's allocate stage (cheap: the scores come from the shared pass),
        then, for a scorer that declares ``search``, the session's search stage (state under ``output``)."""
        assert session.layout is not None
        units = self.plugins.allocator.units(session.layout)
        self.allocation = session.allocate(
            self.plugins.scorer, self.plugins.allocator, units, values[self.scores_key], self.config
        )
        searched: float | None = None
        if self.plugins.scorer.searches:  # a search's state is kept in the bench folder: an interruption resumes
            started = time.perf_counter()
            state_file = output / "partial" / self.cell_key / "search.json" if output is not None else None
            self.allocation = session.search(
                self.plugins.scorer, self.plugins.allocator, self.plugins.pruner, self.allocation, self.config,
                state_file,
            )  # fmt: skip
            searched = round(time.perf_counter() - started, 2)
        prune_key = _prune_key(self.allocation.linear_sparsity, self.config, self.model_sha256)
        self.record = {**self.header(), "prune_key": prune_key, "note": self.allocation.note}
        if searched is not None:
            self.record["search_seconds"] = searched

    def header(self) -> dict[str, Any]:
        """What identifies the cell in results.json and the tables."""
        c = self.cell
        return {
            "key": self.cell_key,
            "id": c.id,
            "model": c.model,
            "model_sha256": self.model_sha256,
            "scorer": c.scorer,
            "allocator": c.allocator,
            "pruner": c.pruner,
            "sparsity": c.sparsity,
            "pattern": c.pattern,
            "seed": self.config.seed,
            "method": c.method,
        }


def _score_model(session: Session, plans: list[CellPlan], store: ResultStore, kept: KeptStats | None) -> None:
    """Scores of every (scorer, allocator) pair of this model's cells, from ONE dense pass (which also keeps
    the pruners' statistics for ``pipeline: basic``); scores already saved are not recomputed."""
    assert session.layout is not None
    scorer_of: dict[str, Any] = {}
    jobs: dict[str, ScoringJob] = {}
    for plan in plans:
        key = plan.scores_key
        if key in store.scores or key in jobs or not plan.plugins.allocator.uses_scores:
            continue
        scorer = scorer_of.setdefault(plan.cell.scorer, plan.plugins.scorer)  # one instance per scorer: shared caches
        jobs[key] = ScoringJob(key, scorer, plan.plugins.allocator.units(session.layout))
    searching = [p for p in plans if p.plugins.scorer.searches and p.plugins.allocator.uses_scores]
    if searching and session.search_stats is None:  # a search prunes candidates from the dense statistics
        session.search_stats = kept or KeptStats(frozenset().union(*(p.plugins.pruner.needs for p in searching)))
    gather = kept if kept is not None else (session.search_stats if searching and jobs else None)
    if jobs or (kept is not None and kept.needs):
        store.scores.update(session.score(list(jobs.values()), gather))
        store.save_scores()
    for plan in plans:  # allocators that ignore scores get zeros, without any pass
        if not plan.plugins.allocator.uses_scores:
            units = plan.plugins.allocator.units(session.layout)
            store.scores.setdefault(plan.scores_key, dict.fromkeys((u.name for u in units), 0.0))


@dataclass
class ModelRun:
    """What the cells of one model share while they run."""

    session: Session
    output: Path
    kept: KeptStats | None
    values: dict[str, dict[str, UnitScore]]


def execute_cell(run: ModelRun, plan: CellPlan, obs: Observer) -> dict[str, Any]:
    """Prune the dense model as planned and evaluate it, with the same stages as ``lsaf run``."""
    started = time.perf_counter()
    session = run.session
    session.restore_dense()
    result = RunResult(config=plan.config)
    checkpoint = None
    if plan.config.resume:  # per-layer checkpoints of the cell, resumed after an interruption
        checkpoint = Checkpoint.open(plan.config, folder=run.output / "partial" / plan.cell_key)
    masks = session.run_job(plan.plugins, result, checkpoint, run.values[plan.scores_key], run.kept, plan.allocation)
    if checkpoint is not None:
        checkpoint.discard()
    return {
        "metrics": result.metrics,
        "dense_metrics": result.dense_metrics,
        "headlines": result.to_json()["headlines"],
        "mask_sha256": dict(masks.hashes),
        "units": [vars(r) for r in result.units],
        "timings_s": result.timings,
        "allocation": result.allocation,
        "reused_from": None,
        "seconds": round(time.perf_counter() - started, 3),
    }


def reuse_outcome(plan: CellPlan, previous: dict[str, Any]) -> dict[str, Any]:
    """A cell whose allocation equals a finished one's takes its metrics and masks."""
    allocation = plan.allocation
    assert allocation is not None
    units = [
        {"name": u.name, "layer": u.layer, "numel": u.numel, "score": allocation.scores.values[u.name],
         "sparsity": allocation.sparsities[u.name], "realised": None}
        for u in allocation.units
    ]  # fmt: skip
    return {
        "metrics": previous["metrics"],
        "dense_metrics": previous.get("dense_metrics", {}),
        "headlines": previous.get("headlines", {}),
        "mask_sha256": previous["mask_sha256"],
        "units": units,
        "reused_from": previous["id"],
        "seconds": 0.0,
    }


#: Runs the unique plans of one model and yields (plan, outcome) as they finish; an outcome with an
#: ``error`` is a cell that failed (its sentence), the others go on.
Executor = Callable[[ModelRun, list[CellPlan], Observer], Iterator[tuple[CellPlan, dict[str, Any]]]]


def failure(exc: Exception) -> dict[str, Any]:
    """The outcome of a failed cell: its error as one sentence (the user's, or the exception's)."""
    if isinstance(exc, LsafError):
        return {"error": str(exc)}
    return {"error": f"{type(exc).__name__}: {exc}"}


def local_executor(run: ModelRun, plans: list[CellPlan], obs: Observer) -> Iterator[tuple[CellPlan, dict]]:
    for plan in plans:
        try:
            outcome = execute_cell(run, plan, obs)
        except Exception as exc:
            outcome = failure(exc)
        yield plan, outcome


class GridFailedError(LsafError):
    """Some cells of a grid failed; the others are finished and saved."""


def run_grid(
    grid: GridConfig,
    output: Path,
    observer: BenchObserver | None = None,
    executor: Executor = local_executor,
    overwrite: bool = False,
) -> ResultStore:
    """Run every unfinished cell of ``grid``; results accumulate in ``output``."""
    all_cells = cells(grid)
    if not all_cells:
        raise BadInputError("The grid has no cells (an axis is an empty list); give every axis at least one value.")
    configs = {c.id: cell_config(grid, c) for c in all_cells}
    plugins = {c.id: resolve_plugins(configs[c.id]) for c in all_cells}  # every name and option checked first
    protected = [p for model in grid.models for p in protected_paths(model)]
    target = open_output(output, overwrite, protected)
    with output_lock(target):
        return _run_grid(grid, all_cells, configs, plugins, target, observer or BenchObserver(), executor)


@contextmanager
def _staging(config: RunConfig, output: Path) -> Iterator[Path | None]:
    """A temporary folder for the pruned shards of an offloaded model, beside the bench folder."""
    if config.offload != "disk":
        yield None
        return
    folder = temporary_sibling(output)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # lsaf's own temporary (tagged name, this pid)


def _run_cells(
    session: Session,
    plans: list[CellPlan],
    store: ResultStore,
    kept: KeptStats | None,
    output: Path,
    executor: Executor,
    obs: BenchObserver,
    finish: Callable[[CellPlan, dict[str, Any], dict[str, float]], None],
    shared: dict[str, float],
) -> None:
    """Allocate every plan (one calibration), reuse finished twins, execute the rest."""
    run = ModelRun(session, output, kept, store.scores)
    waiting: dict[str, list[CellPlan]] = {}
    done_by_key = {r["prune_key"]: r for r in store.records.values() if "prune_key" in r}
    for plan in plans:
        try:
            plan.allocate(session, store.scores, output)
        except Exception as exc:
            finish(plan, failure(exc), shared)
            continue
        if plan.key in done_by_key:
            finish(plan, reuse_outcome(plan, done_by_key[plan.key]), shared)
        else:
            waiting.setdefault(plan.key, []).append(plan)
    for plan, outcome in executor(run, [group[0] for group in waiting.values()], obs):
        finish(plan, outcome, shared)
        for twin in waiting[plan.key][1:]:
            twin_outcome = outcome if "error" in outcome else reuse_outcome(twin, {**plan.record, **outcome})
            finish(twin, twin_outcome, shared)


def _run_grid(
    grid: GridConfig,
    all_cells: list[Cell],
    configs: dict[str, RunConfig],
    plugins: dict[str, Plugins],
    output: Path,
    obs: BenchObserver,
    executor: Executor,
) -> ResultStore:
    from lsa_framework.bench.tables import write_tables

    store = ResultStore.open(output)
    digests = {model: spec_digest(model) for model in grid.models}
    plans = [CellPlan(c, configs[c.id], plugins[c.id], digests[c.model]) for c in all_cells]
    current = dict.fromkeys(plan.cell_key for plan in plans)  # in grid order: the tables follow it
    stale = [key for key in store.records if key not in current]
    if stale:
        obs.message(
            f"{len(stale)} finished cells in {output} come from other settings or weights; they stay in "
            "results.json but not in the tables"
        )
    todo = [plan for plan in plans if plan.cell_key not in store.records]
    obs.start_grid(len(plans), len(plans) - len(todo))
    failed: dict[str, dict[str, Any]] = {}

    def tables() -> None:
        records = [store.records[k] for k in current if k in store.records]
        write_tables(records, list(failed.values()), output, grid.baseline)

    def finish(plan: CellPlan, outcome: dict[str, Any], shared: dict[str, float]) -> None:
        if "error" in outcome:
            failed[plan.cell_key] = {**plan.header(), **outcome}
            obs.message(f"{plan.cell.id} failed: {outcome['error']}")
        else:
            store.add({**plan.record, **outcome, "shared_seconds": shared})
            shutil.rmtree(output / "partial" / plan.cell_key, ignore_errors=True)  # e.g. its search state
        tables()
        obs.cell_done(plan.cell, outcome.get("seconds", 0.0))

    for model in grid.models:
        model_plans = [p for p in todo if p.cell.model == model]
        if not model_plans:
            continue
        with _staging(model_plans[0].config, output) as staging:
            session: Session | None = None
            for seed in dict.fromkeys(p.cell.seed for p in model_plans):  # one calibration per seed, one load
                seed_plans = [p for p in model_plans if p.cell.seed == seed]
                first = seed_plans[0]
                try:
                    started = time.perf_counter()
                    if session is None:
                        session = Session(first.config, first.plugins.dataset, obs, staging)
                        session.load()
                    else:
                        session.recalibrate(first.config)
                    session.calibrate()
                    session.keep_dense()
                    shared = {"load_and_calibrate": round(time.perf_counter() - started, 2)}
                    kept = None
                    if first.config.pipeline == "basic":
                        kept = KeptStats(frozenset().union(*(p.plugins.pruner.needs for p in seed_plans)))
                    started = time.perf_counter()
                    _score_model(session, seed_plans, store, kept)
                    shared["scoring"] = round(time.perf_counter() - started, 2)
                except Exception as exc:  # the shared work failed: every one of these cells did
                    for plan in seed_plans:
                        finish(plan, failure(exc), {})
                    continue
                _run_cells(session, seed_plans, store, kept, output, executor, obs, finish, shared)
    tables()
    if failed:
        first_failure = next(iter(failed.values()))
        raise GridFailedError(
            f"{len(failed)} of {len(plans)} cells failed (first: {first_failure['id']}: {first_failure['error']}); "
            f"the others are saved in {output} and a rerun retries only the failed ones."
        )
    return store

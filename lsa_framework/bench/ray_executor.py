"""Run the cells of a grid as Ray tasks (``lsaf bench --executor ray``; ``pip install lsa-framework[ray]``).

The driver does the shared work (one dense scoring pass per model, the allocations, de-duplication);
each Ray actor loads the model once and prunes + evaluates the cells sent to it. Cells are planned
from the same scores with the same code as the local executor, so the results are identical.
``LSAF_RAY_WORKERS`` sets the number of actors per model (default 1); ``RAY_ADDRESS`` joins a
cluster, otherwise a local Ray is started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lsa_framework.bench.grid import GridConfig, cell_config, cells
from lsa_framework.bench.runner import (
    BenchObserver,
    CellPlan,
    ModelRun,
    ResultStore,
    execute_cell,
    failure,
    run_grid,
)
from lsa_framework.engine.observer import Observer
from lsa_framework.engine.plugins import resolve_plugins
from lsa_framework.engine.session import KeptStats, Session
from lsa_framework.errors import BadInputError


class CellWorker:
    """Holds one model's session; plans and executes cells by id (wrapped as a Ray actor)."""

    def __init__(self, grid_data: dict[str, Any], cell_id: str, output: str) -> None:
        self.grid = GridConfig(**grid_data)
        self.cells = {c.id: c for c in cells(self.grid)}
        config = cell_config(self.grid, self.cells[cell_id])
        self.session = Session(config, resolve_plugins(config).dataset, Observer())
        self.session.load()
        self.session.calibrate()
        self.session.keep_dense()
        self.output = Path(output)
        self.kept: KeptStats | None = None

    def execute(
        self, cell_id: str, model_sha256: str, values: dict[str, dict[str, Any]], kept_needs: list[str] | None
    ) -> dict[str, Any]:
        cell = self.cells[cell_id]
        config = cell_config(self.grid, cell)
        plan = CellPlan(cell, config, resolve_plugins(config), model_sha256)
        if kept_needs is not None and self.kept is None:
            self.kept = KeptStats(frozenset(kept_needs))
            self.session.score([], self.kept)  # the worker's own dense statistics for the basic pipeline
        kept = self.kept
        try:
            plan.allocate(self.session, values, self.output)
            return execute_cell(ModelRun(self.session, self.output, kept, values), plan, Observer())
        except Exception as exc:
            return failure(exc)


def run_grid_ray(
    grid: GridConfig, output: Path, observer: BenchObserver | None = None, overwrite: bool = False
) -> ResultStore:
    try:
        import ray
    except ImportError as exc:
        raise BadInputError("--executor ray needs Ray; install it with `pip install lsa-framework[ray]`.") from exc
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote_worker: Any = ray.remote(CellWorker)
    workers_per_model = int(os.environ.get("LSAF_RAY_WORKERS", "1"))

    def executor(run: ModelRun, plans: list[CellPlan], obs: Observer) -> Iterator[tuple[CellPlan, dict[str, Any]]]:
        if not plans:
            return
        values = {p.scores_key: run.values[p.scores_key] for p in plans}
        kept_needs = sorted(run.kept.needs) if run.kept is not None else None
        grid_data = grid.model_dump(mode="json")
        actors: list[Any] = [
            remote_worker.remote(grid_data, plans[0].cell.id, str(run.output)) for _ in range(workers_per_model)
        ]
        pending = {
            actors[i % len(actors)].execute.remote(plan.cell.id, plan.model_sha256, values, kept_needs): plan
            for i, plan in enumerate(plans)
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as exc:  # the actor itself died
                outcome = failure(exc)
            yield plan, outcome
        for actor in actors:
            ray.kill(actor)

    try:
        return run_grid(grid, output, observer, executor, overwrite)
    finally:
        if started_here:
            ray.shutdown()

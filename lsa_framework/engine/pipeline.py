"""``lsaf run`` and ``lsaf eval`` on the session: one job, or evaluation alone.

    lsaf run --scorer lse --allocator layer --pruner wanda --sparsity 0.7 --output out/lsa-70

Every plugin is resolved and its options validated, and the output folder checked (writable, not a
folder lsaf may not replace) and locked, before the model is loaded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from lsa_framework.config import RunConfig
from lsa_framework.engine.checkpoint import Checkpoint, partial_dir
from lsa_framework.engine.observer import Observer, stage
from lsa_framework.engine.plugins import resolve_dataset, resolve_evaluators, resolve_plugins
from lsa_framework.engine.session import Session
from lsa_framework.model.loading import protected_paths
from lsa_framework.result import RunResult
from lsa_framework.storage.atomic import remove_stale_temporaries
from lsa_framework.storage.guard import check_output
from lsa_framework.storage.lock import output_lock


@contextmanager
def claimed_output(config: RunConfig, kind: str) -> Iterator[Path | None]:
    """The checked, locked output folder of ``config`` (None without ``--output``), before any work."""
    if config.output is None:
        yield None
        return
    target = check_output(config.output, kind=kind, overwrite=config.overwrite, protected=protected_paths(config.model))
    with output_lock(target):
        remove_stale_temporaries(target)
        yield target


@contextmanager
def offload_staging(config: RunConfig) -> Iterator[Path | None]:
    """Where an offloaded run writes its pruned layers: beside the output (kept for ``--resume``), or
    in a temporary folder removed after the run when there is no output."""
    if config.offload != "disk":
        yield None
    elif config.output is not None:
        yield partial_dir(config.output) / "layers"
    else:
        with tempfile.TemporaryDirectory(prefix="lsaf-offload-") as tmp:
            yield Path(tmp)


def run(config: RunConfig, observer: Observer | None = None) -> RunResult:
    """The whole pipeline; writes ``config.output`` atomically when it is set."""
    from lsa_framework.report.output import RUN_KIND, write_run

    config.check_consistency()
    plugins = resolve_plugins(config)
    with claimed_output(config, RUN_KIND) as target:
        checkpoint = Checkpoint.open(config)
        with offload_staging(config) as staging:
            session = Session(config, plugins.dataset, observer or Observer(), staging)
            result = RunResult(config=config)
            masks = session.run_job(plugins, result, checkpoint)
            if target is not None:
                with stage(result, "save"):
                    write_run(session, plugins, result, masks, target)
                result.output = target
        checkpoint.discard()
    return result


def evaluate_model(config: RunConfig, observer: Observer | None = None) -> RunResult:
    """Evaluate ``config.model`` as it is (``lsaf eval``): no scoring, no pruning."""
    from lsa_framework.report.output import EVAL_KIND, write_evaluation

    dataset = resolve_dataset(config)
    evaluators = resolve_evaluators(config)
    with claimed_output(config, EVAL_KIND) as target:
        session = Session(config, dataset, observer or Observer())
        result = RunResult(config=config, kind=EVAL_KIND)
        session.load(result)
        session.describe(result)
        result.headlines = {e.name: e.headline for e in evaluators}
        result.summary = [p for e in evaluators for p in e.summary]
        with stage(result, "evaluation"):
            result.metrics = session.evaluate(evaluators)
        with stage(result, "save") if target is not None else nullcontext():
            if target is not None:
                write_evaluation(result, target, config.overwrite, protected_paths(config.model))
                result.output = target
    return result

"""The pruning pipeline: load → calibrate → score → allocate → prune → evaluate → save.

    lsaf run --scorer lse --allocator layer --pruner wanda --sparsity 0.7

Every step goes through registered plugins; nothing here knows a plugin by name. Plugins are
resolved and their options validated before the model is loaded.
"""

from __future__ import annotations

import hashlib
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lsa_framework import __version__, registry
from lsa_framework.allocators.mapping import MAX_SPARSITY
from lsa_framework.config import RunConfig, plugin_options
from lsa_framework.data.windows import fit_seqlen, model_context, sample_windows
from lsa_framework.engine.checkpoint import Checkpoint, partial_dir
from lsa_framework.engine.sequential import Activations, capture_layer_inputs, pruning_pass, scoring_pass
from lsa_framework.errors import BadInputError, LsafError, PluginError
from lsa_framework.model.layout import find_layout
from lsa_framework.model.loading import load_model, protected_paths
from lsa_framework.storage.atomic import remove_stale_temporaries
from lsa_framework.storage.guard import check_output
from lsa_framework.storage.lock import output_lock
from lsa_framework.types import EvalContext, Layout, LinearInfo, LinearStats, Pattern, Scores, Unit


@dataclass
class UnitRecord:
    name: str
    layer: int
    numel: int
    score: float
    sparsity: float  # allocated
    realised: float | None = None  # counted from the weights after pruning


@dataclass
class RunResult:
    """What a run produced; ``to_json`` is what run.json holds."""

    config: RunConfig
    units: list[UnitRecord] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    mask_hashes: dict[str, str] = field(default_factory=dict)
    allocation: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    model_source: str = ""
    model_sha256: str = ""
    calibration: dict[str, int] = field(default_factory=dict)  # the windows actually used
    output: Path | None = None

    def to_json(self) -> dict[str, Any]:
        import transformers

        return {
            "config": self.config.model_dump(mode="json"),
            "versions": {
                "lsa_framework": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
            "seed": self.config.seed,
            "model_source": self.model_source,
            "model_sha256": self.model_sha256,
            "calibration": self.calibration,
            "allocation": self.allocation,
            "units": [vars(u) for u in self.units],
            "metrics": self.metrics,
            "timings_s": self.timings,
            "peak_rss_mb": self.peak_rss_mb,
            "mask_sha256": self.mask_hashes,
            "extra": self.extra,
        }


@dataclass
class Plugin:
    """A resolved plugin instance with the package it came from (for error messages)."""

    kind: str
    name: str
    distribution: str
    instance: Any

    def call(self, method: str, *args: Any) -> Any:
        """Call a plugin method; an unexpected exception becomes a PluginError naming the plugin."""
        return _guarded(self.kind, self.name, self.distribution, method, getattr(self.instance, method), *args)


def _guarded(kind: str, name: str, distribution: str, what: str, function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except LsafError:
        raise
    except Exception as exc:
        raise PluginError(
            f"The {kind[:-1]} {name!r} from package {distribution!r} failed in {what}() with "
            f"{type(exc).__name__}: {exc}; report it to that package's authors."
        ) from exc


def resolve(kind: str, name: str, options: dict[str, Any]) -> Plugin:
    entry = registry.lookup(kind, name)
    validated = plugin_options(kind, name, options)
    instance = _guarded(kind, name, entry.distribution, "__init__", entry.cls, validated)
    return Plugin(kind, name, entry.distribution, instance)


def resolve_dataset(config: RunConfig) -> Plugin:
    """``--calibration`` is a dataset name, or a spec (e.g. a file path) that a dataset plugin claims
    through its optional ``options_for(spec)`` classmethod."""
    datasets = registry.collect("datasets")
    if config.calibration not in datasets:
        for entry in datasets.values():
            claim = getattr(entry.cls, "options_for", None)
            options = claim(config.calibration) if claim is not None else None
            if options is not None:
                return resolve("datasets", entry.name, {**options, **config.calibration_opts})
    return resolve("datasets", config.calibration, config.calibration_opts)  # or a did-you-mean error


@dataclass
class Plugins:
    scorer: Plugin
    allocator: Plugin
    pruner: Plugin
    dataset: Plugin
    evaluators: list[Plugin]


def resolve_plugins(config: RunConfig) -> Plugins:
    unknown_eval_opts = set(config.eval_opts) - set(config.eval)
    if unknown_eval_opts:
        raise BadInputError(
            f"--eval-opt given for {', '.join(sorted(unknown_eval_opts))}, which is not in --eval "
            f"({', '.join(config.eval)}); add it to --eval or drop the option."
        )
    plugins = Plugins(
        scorer=resolve("scorers", config.scorer, config.scorer_opts),
        allocator=resolve("allocators", config.allocator, config.allocator_opts),
        pruner=resolve("pruners", config.pruner, config.pruner_opts),
        dataset=resolve_dataset(config),
        evaluators=[resolve("evaluators", n, config.eval_opts.get(n, {})) for n in config.eval],
    )
    for evaluator in plugins.evaluators:
        if "check" in getattr(evaluator.instance, "capabilities", ()):
            evaluator.call("check", config)  # a setting it cannot use is refused before any work
    return plugins


class Stages:
    """Wall time and peak RSS per stage, recorded into the result."""

    def __init__(self, result: RunResult) -> None:
        self.result = result

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.result.timings[name] = round(time.perf_counter() - start, 3)
            self.result.peak_rss_mb[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def mask_hash(mask: torch.Tensor) -> str:
    packed = mask.to(device="cpu", dtype=torch.bool).contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(packed).hexdigest()[:16]


class Observer:
    """Progress callbacks the CLI overrides; the base class does nothing."""

    def start_pass(self, name: str, total: int) -> None:
        """A pass over ``total`` decoder layers begins."""

    def advance(self) -> None:
        """One more layer of the current pass is done."""

    def end_pass(self) -> None:
        """The current pass is over."""

    def message(self, text: str) -> None:
        """A short status line."""


def _units_by_layer(units: list[Unit]) -> dict[int, list[Unit]]:
    by_layer: dict[int, list[Unit]] = {}
    for unit in units:
        by_layer.setdefault(unit.layer, []).append(unit)
    return by_layer


@dataclass
class ScoringJob:
    """One scorer scoring one allocator's units; several jobs share one dense pass."""

    key: str
    scorer: Plugin
    units: list[Unit]


@dataclass
class KeptStats:
    """Statistics the scoring pass keeps for the pruner (the basic pipeline), layer by layer."""

    needs: frozenset[str]
    by_layer: dict[int, dict[str, LinearStats]] = field(default_factory=dict)

    def keep(self, index: int, stats: dict[str, LinearStats]) -> None:
        """Store only what the pruner needs, on the CPU; linears of one input group share one copy."""
        trimmed: dict[int, LinearStats] = {}
        for name, value in stats.items():
            if id(value) not in trimmed:
                trimmed[id(value)] = LinearStats(
                    value.nsamples,
                    value.ntokens,
                    input_sq_norm=self._cpu(value.input_sq_norm, "input_sq_norm"),
                    gram=self._cpu(value.gram, "gram"),
                )
            self.by_layer.setdefault(index, {})[name] = trimmed[id(value)]

    def _cpu(self, tensor: torch.Tensor | None, stat: str) -> torch.Tensor | None:
        return tensor.to("cpu") if tensor is not None and stat in self.needs else None


def score_jobs(
    jobs: list[ScoringJob],
    layout: Layout,
    calibrate: Callable[[], Activations],
    observer: Observer,
    kept: KeptStats | None = None,
) -> dict[str, dict[str, float]]:
    """Unit scores of every job. Jobs whose scorer needs statistics share ONE dense pass that
    gathers the union of their needs; the others are scored without touching the data. With
    ``kept``, the same pass also gathers and keeps the pruner's statistics."""
    values: dict[str, dict[str, float]] = {job.key: {} for job in jobs}
    data_jobs = [job for job in jobs if job.scorer.instance.needs]
    for job in jobs:
        if job not in data_jobs:
            for layer, units in _units_by_layer(job.units).items():
                with layout.resident(layer):  # a weight-only scorer still reads the weights
                    values[job.key].update({u.name: float(job.scorer.call("score", u, {})) for u in units})
    needs = frozenset().union(*(job.scorer.instance.needs for job in data_jobs), kept.needs if kept else ())
    if not needs:
        return values
    by_layer = {job.key: _units_by_layer(job.units) for job in data_jobs}

    def on_stats(index: int, stats: dict[str, LinearStats]) -> None:
        for job in data_jobs:
            for unit in by_layer[job.key].get(index, []):
                values[job.key][unit.name] = float(job.scorer.call("score", unit, stats))
        if kept is not None:
            kept.keep(index, stats)

    observer.start_pass("scoring", layout.num_layers)
    scoring_pass(layout, calibrate(), needs, on_stats, lambda _i: observer.advance())
    observer.end_pass()
    return values


def allocate(
    allocator: Plugin, units: list[Unit], scores: Scores, target: float, pattern: Pattern
) -> tuple[dict[str, float], str | None]:
    """Per-unit sparsities, and a note when the pattern overrides the allocation."""
    sizes = {u.name: u.numel for u in units}
    sparsities: dict[str, float] = allocator.call("allocate", scores, sizes, target)
    missing = {u.name for u in units} - set(sparsities)
    if missing:
        raise PluginError(
            f"The allocator {allocator.name!r} from package {allocator.distribution!r} "
            f"gave no sparsity for {len(missing)} units (e.g. {sorted(missing)[0]}); fix the allocator."
        )
    if pattern.is_nm:
        # N:M fixes the sparsity of every group of M weights; scores are kept for the report only.
        return dict.fromkeys(sparsities, target), f"{pattern} fixes every unit at {target:g}; allocation not applied"
    return sparsities, None


def prune_linears(
    pruner: Plugin,
    linears: Sequence[LinearInfo],
    stats: dict[str, LinearStats],
    linear_sparsity: dict[str, float],
    pattern: Pattern,
) -> dict[str, torch.Tensor]:
    """Prune one layer's linears; their masks by name.

    A pruner with a ``prune_group`` method gets each input group (q/k/v, gate/up: linears that share
    one input and so one set of statistics) in a single call, to share work such as SparseGPT's
    inverse Hessian; other pruners get one ``prune`` call per linear.
    """
    groups: dict[str, list[LinearInfo]] = {}
    for info in linears:
        if info.name in linear_sparsity:
            groups.setdefault(info.input_group, []).append(info)
    grouped = hasattr(pruner.instance, "prune_group")
    masks: dict[str, torch.Tensor] = {}
    for members in groups.values():
        if grouped:
            modules = [info.module for info in members]
            sparsities = [linear_sparsity[info.name] for info in members]
            found = pruner.call("prune_group", modules, stats[members[0].name], sparsities, pattern)
            if len(found) != len(members):
                raise PluginError(
                    f"The pruner {pruner.name!r} from package {pruner.distribution!r} returned "
                    f"{len(found)} masks for {len(members)} linears in prune_group(); fix the pruner."
                )
            masks.update(zip((info.name for info in members), found, strict=True))
        else:
            for info in members:
                masks[info.name] = pruner.call(
                    "prune", info.module, stats[info.name], linear_sparsity[info.name], pattern
                )
    return masks


def prune_model(
    layout: Layout,
    calibrate: Callable[[], Activations],
    pruner: Plugin,
    linear_sparsity: dict[str, float],
    pattern: Pattern,
    observer: Observer,
    report: Any = None,
    checkpoint: Checkpoint | None = None,
    kept: KeptStats | None = None,
) -> dict[str, str]:
    """The pruning pass; returns a hash of every linear's mask.

    Sequential (statistics from the inputs of the already-pruned layers) unless ``kept`` holds the
    dense model's statistics (the basic pipeline): then no forward runs.

    With a checkpoint, each pruned layer is saved as soon as it is done, and a resumed run starts
    after the last saved layer.
    """
    pm = registry.plugin_manager()
    start = 0
    hashes: dict[str, str] = {}
    restore_layer = None
    if checkpoint is not None:
        start = checkpoint.layers_done
        hashes = checkpoint.saved_hashes
        restore_layer = partial(checkpoint.restore_layer, layout)

    def prune_layer(index: int, stats: dict[str, LinearStats]) -> None:
        masks = prune_linears(pruner, layout.linears[index], stats, linear_sparsity, pattern)
        layer_hashes = {name: mask_hash(mask) for name, mask in masks.items()}
        hashes.update(layer_hashes)
        pm.hook.lsaf_after_layer_pruned(layer_index=index, masks=masks, report=report)
        if checkpoint is not None:
            checkpoint.save_layer(layout, index, layer_hashes)

    observer.start_pass("pruning", layout.num_layers)
    needs = frozenset(pruner.instance.needs)
    acts = calibrate() if needs and kept is None else None  # no forward for masks that ignore the data
    saved = kept.by_layer if kept is not None else None
    pruning_pass(
        layout, acts, needs, prune_layer, lambda _i: observer.advance(), start, restore_layer, saved_stats=saved
    )
    observer.end_pass()
    return hashes


def unit_records(
    layout: Layout, units: list[Unit], values: dict[str, float], sparsities: dict[str, float]
) -> list[UnitRecord]:
    """Allocated and realised (zeros counted in the weights) sparsity of every unit."""
    records = []
    for layer, layer_units in _units_by_layer(units).items():
        with layout.resident(layer):
            for u in layer_units:
                zeros = sum(int((info.module.weight == 0).sum()) for info in u.linears)
                records.append(
                    UnitRecord(u.name, u.layer, u.numel, values[u.name], sparsities[u.name], zeros / u.numel)
                )
    order = {u.name: i for i, u in enumerate(units)}
    return sorted(records, key=lambda r: order[r.name])


def evaluate(evaluators: list[Plugin], model: Any, tokenizer: Any, context: EvalContext, observer: Observer) -> dict:
    metrics: dict[str, float] = {}
    for evaluator in evaluators:
        observer.message(f"evaluating {evaluator.name}")
        metrics.update(evaluator.call("evaluate", model, tokenizer, context))
    return metrics


def calibration_seqlen(config: RunConfig, model: Any, observer: Observer | None = None) -> int:
    """``config.seqlen``, or the model's context when the default exceeds it (an explicit one may not)."""
    seqlen, notice = fit_seqlen(config.seqlen, model_context(model), "seqlen" in config.model_fields_set)
    if notice and observer is not None:
        observer.message(notice)
    return seqlen


def calibration_ids(
    config: RunConfig, dataset: Plugin, tokenizer: Any, model: Any, observer: Observer | None = None
) -> torch.Tensor:
    """The seeded calibration windows (see :func:`calibration_seqlen` for their length)."""
    documents = dataset.call("documents", "calibration")
    seqlen = calibration_seqlen(config, model, observer)
    return sample_windows(tokenizer, documents, config.nsamples, seqlen, config.seed)


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
    from lsa_framework.report.output import check_output_path

    config.check_consistency()
    plugins = resolve_plugins(config)
    if config.output is None:
        return _prepared_run(config, plugins, observer or Observer())
    target = check_output_path(config.output, config.overwrite, protected_paths(config.model))
    with output_lock(target):
        remove_stale_temporaries(target)
        return _prepared_run(config, plugins, observer or Observer())


def _prepared_run(config: RunConfig, plugins: Plugins, observer: Observer) -> RunResult:
    if config.threads:
        torch.set_num_threads(config.threads)
    checkpoint = Checkpoint.open(config)
    with offload_staging(config) as staging:
        return _run(config, plugins, checkpoint, staging, observer)


def _run(
    config: RunConfig, plugins: Plugins, checkpoint: Checkpoint, staging: Path | None, observer: Observer
) -> RunResult:
    from lsa_framework.report.output import write_output

    device = config.torch_device
    pm = registry.plugin_manager()
    pm.hook.lsaf_before_run(config=config)
    result = RunResult(config=config)
    stage = Stages(result)
    pattern = config.parsed_pattern
    target = config.target_sparsity

    with stage("load"):
        loaded = load_model(config.model, config.dtype, offload_staging=staging)
        model, tokenizer = loaded.model, loaded.tokenizer
        result.model_source = loaded.source
        result.model_sha256 = loaded.digest()
        checkpoint.bind_model(result.model_sha256, config.model)
        layout = loaded.layout()
    units: list[Unit] = plugins.allocator.call("units", layout)
    with stage("calibration"):
        input_ids = calibration_ids(config, plugins.dataset, tokenizer, model, observer)
        result.calibration = {"nsamples": int(input_ids.shape[0]), "seqlen": int(input_ids.shape[1])}

    def calibrate() -> Activations:
        return capture_layer_inputs(model, layout.layers[0], input_ids, config.batch_size, device)

    # The basic pipeline keeps the dense pass's statistics for the pruner: one forward in all.
    kept = KeptStats(frozenset(plugins.pruner.instance.needs)) if config.pipeline == "basic" else None
    with stage("scoring"):
        values = checkpoint.scores
        if values is None or (kept is not None and kept.needs):
            job = ScoringJob("run", plugins.scorer, units)
            values = score_jobs([job], layout, calibrate, observer, kept)["run"]
            checkpoint.save_scores(values)
        granularity = getattr(plugins.allocator.instance, "granularity", "layer")
        scores: Scores = plugins.scorer.call("finish", values, target, granularity)
    pm.hook.lsaf_after_scoring(scores=scores, report=result)

    with stage("allocation"):
        sparsities, note = allocate(plugins.allocator, units, scores, target, pattern)
        result.allocation = {
            "scorer_spread": scores.spread,
            "granularity": granularity,
            # units the final step pinned at a bound (its excess went to the others by size)
            "clipped_units": sorted(n for n, v in sparsities.items() if v <= 0.0 or v >= MAX_SPARSITY),
        }
        if note:
            result.allocation["note"] = note
    pm.hook.lsaf_after_allocation(sparsities=sparsities, report=result)
    linear_sparsity = {info.name: sparsities[u.name] for u in units for info in u.linears}

    with stage("pruning"):
        result.mask_hashes = prune_model(
            layout, calibrate, plugins.pruner, linear_sparsity, pattern, observer, result, checkpoint, kept
        )
    result.units = unit_records(layout, units, values, sparsities)

    with stage("evaluation"):
        context = EvalContext(
            config=config, dataset=plugins.dataset.instance, layout=layout, seqlen=result.calibration["seqlen"]
        )
        loaded.place(device)
        result.metrics = evaluate(plugins.evaluators, model, tokenizer, context, observer)
        loaded.place(torch.device("cpu"))
    pm.hook.lsaf_after_run(result=result)
    if config.output is not None:
        with stage("save"):
            write_output(result, loaded.save, tokenizer, config.output, config.overwrite, protected_paths(config.model))
        result.output = config.output
    checkpoint.discard()
    return result


def evaluate_model(config: RunConfig, observer: Observer | None = None) -> RunResult:
    """Evaluate ``config.model`` as it is (``lsaf eval``): no scoring, no pruning."""
    observer = observer or Observer()
    plugins = resolve_plugins(config)
    if config.output is None:
        return _evaluate_model(config, plugins, observer)
    from lsa_framework.report.output import EVAL_KIND

    protected = protected_paths(config.model)
    target = check_output(config.output, kind=EVAL_KIND, overwrite=config.overwrite, protected=protected)
    with output_lock(target):
        remove_stale_temporaries(target)
        return _evaluate_model(config, plugins, observer)


def _evaluate_model(config: RunConfig, plugins: Plugins, observer: Observer) -> RunResult:
    from lsa_framework.report.output import write_evaluation

    result = RunResult(config=config)
    stage = Stages(result)
    with stage("load"):
        loaded = load_model(config.model, config.dtype)
        result.model_source = loaded.source
        result.model_sha256 = loaded.digest()
    with stage("evaluation"):
        layout = find_layout(loaded.model) if "sparsity" in config.eval else None
        seqlen = calibration_seqlen(config, loaded.model, observer)
        context = EvalContext(config=config, dataset=plugins.dataset.instance, layout=layout, seqlen=seqlen)
        result.metrics = evaluate(plugins.evaluators, loaded.model, loaded.tokenizer, context, observer)
    if config.output is not None:
        with stage("save"):
            write_evaluation(result, config.output, config.overwrite, protected_paths(config.model))
        result.output = config.output
    return result

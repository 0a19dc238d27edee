"""The pruning pipeline: load → calibrate → score → allocate → prune → evaluate → save.

    lsaf run --scorer lse --allocator layer --pruner wanda --sparsity 0.7

Every step goes through registered plugins; nothing here knows a plugin by name. Plugins are
resolved and their options validated before the model is loaded.
"""

from __future__ import annotations

import hashlib
import platform
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from lsa_framework import __version__, registry
from lsa_framework.config import RunConfig, plugin_options
from lsa_framework.data.windows import sample_windows
from lsa_framework.engine.sequential import capture_layer_inputs, pruning_pass, scoring_pass
from lsa_framework.errors import BadInputError, LsafError, PluginError
from lsa_framework.model.layout import find_layout
from lsa_framework.model.loading import load_model
from lsa_framework.types import EvalContext, Layout, LinearStats, Scores, Unit

T = TypeVar("T")


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
        try:
            return getattr(self.instance, method)(*args)
        except LsafError:
            raise
        except Exception as exc:
            raise PluginError(
                f"The {self.kind[:-1]} {self.name!r} from package {self.distribution!r} failed in "
                f"{method}() with {type(exc).__name__}: {exc}; report it to that package's authors."
            ) from exc


def resolve(kind: str, name: str, options: dict[str, Any]) -> Plugin:
    entry = registry.lookup(kind, name)
    return Plugin(kind, name, entry.distribution, entry.cls(plugin_options(kind, name, options)))


def resolve_dataset(config: RunConfig) -> Plugin:
    """``--calibration`` is a dataset name, or else a path to a local text/JSONL file."""
    datasets = registry.collect("datasets")
    if config.calibration in datasets:
        return resolve("datasets", config.calibration, config.calibration_opts)
    looks_like_file = any(c in config.calibration for c in "/.\\")
    if looks_like_file and "file" in datasets:
        return resolve("datasets", "file", {"path": config.calibration, **config.calibration_opts})
    return resolve("datasets", config.calibration, config.calibration_opts)  # did-you-mean error


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
    return Plugins(
        scorer=resolve("scorers", config.scorer, config.scorer_opts),
        allocator=resolve("allocators", config.allocator, config.allocator_opts),
        pruner=resolve("pruners", config.pruner, config.pruner_opts),
        dataset=resolve_dataset(config),
        evaluators=[resolve("evaluators", n, config.eval_opts.get(n, {})) for n in config.eval],
    )


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
    packed = mask.to(torch.bool).contiguous().view(torch.uint8).numpy().tobytes()
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


def score_units(
    plugins: Plugins, layout: Layout, units: list[Unit], calibrate: Callable[[], Any], observer: Observer
) -> dict[str, float]:
    """Scores for every unit; runs the dense pass only when the scorer needs statistics."""
    scorer = plugins.scorer
    needs = frozenset(scorer.instance.needs)
    if not needs:
        return {u.name: float(scorer.call("score", u, {})) for u in units}
    by_layer = _units_by_layer(units)
    values: dict[str, float] = {}

    def on_stats(index: int, stats: dict[str, LinearStats]) -> None:
        for unit in by_layer.get(index, []):
            values[unit.name] = float(scorer.call("score", unit, stats))

    observer.start_pass("scoring", layout.num_layers)
    scoring_pass(layout, calibrate(), needs, on_stats, lambda _i: observer.advance())
    observer.end_pass()
    return values


def allocate(config: RunConfig, plugins: Plugins, units: list[Unit], scores: Scores) -> dict[str, float]:
    sizes = {u.name: u.numel for u in units}
    sparsities: dict[str, float] = plugins.allocator.call("allocate", scores, sizes, config.target_sparsity)
    missing = {u.name for u in units} - set(sparsities)
    if missing:
        raise PluginError(
            f"The allocator {plugins.allocator.name!r} from package {plugins.allocator.distribution!r} "
            f"gave no sparsity for {len(missing)} units (e.g. {sorted(missing)[0]}); fix the allocator."
        )
    return sparsities


def run(config: RunConfig, observer: Observer | None = None) -> RunResult:
    """The whole pipeline; writes ``config.output`` atomically when it is set."""
    from lsa_framework.report.output import check_output_path, write_output

    observer = observer or Observer()
    config.check_consistency()
    plugins = resolve_plugins(config)
    if config.output is not None:
        check_output_path(config.output, config.overwrite)
    if config.threads:
        torch.set_num_threads(config.threads)
    pm = registry.plugin_manager()
    pm.hook.lsaf_before_run(config=config)
    result = RunResult(config=config)
    stage = Stages(result)
    pattern = config.parsed_pattern
    target = config.target_sparsity

    with stage("load"):
        loaded = load_model(config.model, config.dtype)
        model, tokenizer = loaded.model, loaded.tokenizer
        result.model_source = loaded.source
        layout = find_layout(model)
    units: list[Unit] = plugins.allocator.call("units", layout)

    with stage("calibration"):
        documents = plugins.dataset.call("documents", "calibration")
        seqlen = min(config.seqlen, int(getattr(model.config, "max_position_embeddings", config.seqlen)))
        input_ids = sample_windows(tokenizer, documents, config.nsamples, seqlen, config.seed)

    def calibrate() -> Any:
        return capture_layer_inputs(model, layout.layers[0], input_ids, config.batch_size)

    with stage("scoring"):
        values = score_units(plugins, layout, units, calibrate, observer)
        granularity = getattr(plugins.allocator.instance, "granularity", "layer")
        scores: Scores = plugins.scorer.call("finish", values, target, granularity)
    pm.hook.lsaf_after_scoring(scores=scores, report=result)

    with stage("allocation"):
        sparsities = allocate(config, plugins, units, scores)
        result.allocation = {"scorer_spread": scores.spread, "granularity": granularity}
        if pattern.is_nm:
            # N:M fixes the sparsity of every group of M weights; scores are kept for the report only.
            sparsities = dict.fromkeys(sparsities, target)
            result.allocation["note"] = f"{pattern} fixes every unit at {target:g}; the allocation is not applied"
    pm.hook.lsaf_after_allocation(sparsities=sparsities, report=result)
    linear_sparsity = {info.name: sparsities[u.name] for u in units for info in u.linears}

    with stage("pruning"):
        pruner = plugins.pruner

        def prune_layer(index: int, stats: dict[str, LinearStats]) -> None:
            masks = {}
            for info in layout.linears[index]:
                if info.name not in linear_sparsity:
                    continue
                mask = pruner.call("prune", info.module, stats[info.name], linear_sparsity[info.name], pattern)
                masks[info.name] = mask
                result.mask_hashes[info.name] = mask_hash(mask)
            pm.hook.lsaf_after_layer_pruned(layer_index=index, masks=masks, report=result)

        observer.start_pass("pruning", layout.num_layers)
        pruning_pass(layout, calibrate(), frozenset(pruner.instance.needs), prune_layer, lambda _i: observer.advance())
        observer.end_pass()

    zeros_per_unit = {u.name: sum(int((i.module.weight == 0).sum()) for i in u.linears) for u in units}
    result.units = [
        UnitRecord(u.name, u.layer, u.numel, values[u.name], sparsities[u.name], zeros_per_unit[u.name] / u.numel)
        for u in units
    ]
    with stage("evaluation"):
        context = EvalContext(config=config, dataset=plugins.dataset.instance, layout=layout)
        for evaluator in plugins.evaluators:
            observer.message(f"evaluating {evaluator.name}")
            result.metrics.update(evaluator.call("evaluate", model, tokenizer, context))
    pm.hook.lsaf_after_run(result=result)
    if config.output is not None:
        with stage("save"):
            write_output(result, model, tokenizer, config.output, config.overwrite)
        result.output = config.output
    return result

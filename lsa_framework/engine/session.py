"""The session: one loaded model and the stages every command runs on it.

    lsaf run    = a session with one job: load → calibrate → score → allocate → prune → evaluate → save
    lsaf bench  = a session per model with many jobs: one load, one calibration, ONE scoring pass for
                  every scorer × granularity, one pruning per distinct allocation
    lsaf eval   = a session's load and evaluate stages alone

Each stage is a method here; it fires its lifecycle hook and is timed and memory-measured the same way
(:func:`lsa_framework.engine.observer.stage`) whichever command runs it. The walk of a run, once:

* ``load`` — the model (whole, or with ``--offload disk`` its decoder layers left on disk), its
  content hash, and the layout found from its module tree (:mod:`lsa_framework.model.discovery`);
* ``calibrate`` — the seeded token windows of the dataset's calibration split; each pass then records
  how the model calls every layer on them (:mod:`lsa_framework.engine.layer_calls`);
* ``score`` — one dense pass gathers, per input group, the union of the statistics every job's scorer
  needs (and, for ``--pipeline basic``, the pruner's), and each scorer scores its allocator's units;
* ``allocate`` — the allocator maps scores to one sparsity per unit (exact parameter-weighted mean);
* ``search`` — only for a scorer that declares ``search`` (``evo``): it refines that allocation by
  evaluating candidates on the model (:mod:`lsa_framework.engine.search`), from the dense statistics
  the scoring pass kept;
* ``prune`` — layer by layer, on the inputs of the already-pruned layers (sequential) or from the kept
  dense statistics (basic), the pruner prunes each linear at its unit's sparsity; masks are kept packed;
* ``evaluate`` — every evaluator on the model as it is (and once on the dense model, for "dense → pruned");
* ``save`` — the exporters write their parts of the output folder, which appears atomically.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lsa_framework import registry
from lsa_framework.allocators.mapping import MAX_SPARSITY, finalize
from lsa_framework.config import RunConfig
from lsa_framework.data.windows import fit_seqlen, model_context, sample_windows
from lsa_framework.engine.checkpoint import PARTIAL_MARKER, Checkpoint
from lsa_framework.engine.expert_stats import RoutingLog, prune_by_magnitude, unrouted
from lsa_framework.engine.layer_calls import Activations, capture_activations
from lsa_framework.engine.masks import MaskSet
from lsa_framework.engine.observer import Observer, stage
from lsa_framework.engine.passes import pruning_pass, scoring_pass
from lsa_framework.engine.plugins import (
    AllocatorHandle,
    DatasetHandle,
    EvaluatorHandle,
    Plugins,
    PrunerHandle,
    RecovererHandle,
    ScorerHandle,
)
from lsa_framework.engine.statistics import statistic_classes
from lsa_framework.errors import BadInputError
from lsa_framework.model.loading import LoadedModel, load_model
from lsa_framework.result import RunResult, UnitRecord
from lsa_framework.storage.atomic import make_folder
from lsa_framework.types import (
    EvalContext,
    Layout,
    LinearStats,
    RecoveryContext,
    Scores,
    SearchContext,
    Unit,
    UnitScore,
)


def _units_by_layer(units: Sequence[Unit]) -> dict[int, list[Unit]]:
    by_layer: dict[int, list[Unit]] = {}
    for unit in units:
        by_layer.setdefault(unit.layer, []).append(unit)
    return by_layer


@dataclass
class ScoringJob:
    """One scorer scoring one allocator's units; several jobs share one dense pass."""

    key: str
    scorer: ScorerHandle
    units: list[Unit]


@dataclass
class KeptStats:
    """Statistics the scoring pass keeps for the pruner (the basic pipeline), layer by layer, on the CPU."""

    needs: frozenset[str]
    by_layer: dict[int, dict[str, LinearStats]] = field(default_factory=dict)

    def keep(self, index: int, stats: dict[str, LinearStats]) -> None:
        """Store only what the pruner needs; linears of one input group share one copy."""
        trimmed: dict[int, LinearStats] = {}
        for name, value in stats.items():
            if id(value) not in trimmed:
                kept = value.only(self.needs)
                kept.values = {k: v.to("cpu") for k, v in kept.values.items()}
                trimmed[id(value)] = kept
            self.by_layer.setdefault(index, {})[name] = trimmed[id(value)]


@dataclass
class Allocation:
    """A job's units with their scores and sparsities."""

    units: list[Unit]
    values: dict[str, UnitScore]
    scores: Scores
    sparsities: dict[str, float]
    note: str | None = None
    search: dict[str, Any] | None = None  # what a searching scorer recorded about its search

    @property
    def linear_sparsity(self) -> dict[str, float]:
        return {info.name: self.sparsities[u.name] for u in self.units for info in u.linears}

    def summary(self, granularity: str, used_scores: bool) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "scorer_spread": self.scores.spread,
            "granularity": granularity,
            "scores_used": used_scores,
            # units the final step pinned at a bound (its excess went to the others by size)
            "clipped_units": sorted(n for n, v in self.sparsities.items() if v <= 0.0 or v >= MAX_SPARSITY),
        }
        if self.note:
            summary["note"] = self.note
        if self.search is not None:
            summary["search"] = self.search
        return summary


class Session:
    """A model and everything the jobs run on it share."""

    def __init__(self, config: RunConfig, dataset: DatasetHandle, observer: Observer, staging: Path | None = None):
        self.config = config
        self.dataset = dataset
        self.observer = observer
        self.staging = staging
        self.device = config.torch_device
        self.loaded: LoadedModel | None = None
        self.layout: Layout | None = None
        self.input_ids: torch.Tensor | None = None
        self.model_sha256 = ""
        self.source = ""
        self._dense: dict[str, torch.Tensor] | None = None
        #: the dense model's statistics kept for a searching scorer (``search``); filled by ``score``
        self.search_stats: KeptStats | None = None
        self.recovered: Any = None  # what the recovery stage returned (its exporter-side extras)
        self._dense_metrics: dict[str, dict[str, float]] = {}
        self.routing = RoutingLog()  # how the router spread the calibration tokens (MoE models)
        if config.threads:
            torch.set_num_threads(config.threads)

    @property
    def hooks(self) -> Any:
        return registry.plugin_manager().hook

    # --- load ------------------------------------------------------------------------------------------

    def load(self, result: RunResult | None = None) -> None:
        """The model, its content hash and its layout; a no-op once loaded."""
        if self.loaded is not None:
            return
        with _maybe_stage(result, "load"):
            self.loaded = load_model(self.config.model, self.config.dtype, offload_staging=self.staging)
            self.source = self.loaded.source
            self.model_sha256 = self.loaded.digest()
            self.layout = self.loaded.layout()

    @property
    def model(self) -> Any:
        assert self.loaded is not None, "load() first"
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        assert self.loaded is not None, "load() first"
        return self.loaded.tokenizer

    def describe(self, result: RunResult) -> None:
        """Record what the session ran on into ``result``."""
        result.model_source = self.source
        result.model_sha256 = self.model_sha256
        if self.input_ids is not None:
            result.calibration = {"nsamples": int(self.input_ids.shape[0]), "seqlen": int(self.input_ids.shape[1])}
            if self.layout is not None and self.layout.bos_token_id is not None:
                result.calibration["bos_token_id"] = self.layout.bos_token_id

    # --- calibrate -------------------------------------------------------------------------------------

    def seqlen(self) -> int:
        """``--seqlen``, or the model's context when the default exceeds it (an explicit one may not)."""
        explicit = "seqlen" in self.config.model_fields_set
        seqlen, notice = fit_seqlen(self.config.seqlen, model_context(self.model), explicit)
        if notice:
            self.observer.message(notice)
        return seqlen

    def calibrate(self, result: RunResult | None = None) -> None:
        """The seeded calibration windows; a no-op once drawn."""
        if self.input_ids is not None:
            return
        with _maybe_stage(result, "calibration"):
            documents = self.dataset.documents("calibration")
            c = self.config
            bos = self.layout.bos_token_id if self.layout is not None else None
            self.input_ids = sample_windows(self.tokenizer, documents, c.nsamples, self.seqlen(), c.seed, bos)

    def recalibrate(self, config: RunConfig) -> None:
        """Use ``config`` (e.g. another ``seed``) for the next calibration: the windows, and everything
        gathered from them, are drawn anew; the loaded model stays (its dense weights restored)."""
        self.config = config
        self.input_ids = None
        self.search_stats = None
        self.restore_dense()

    def activations(self) -> Activations:
        """The windows at the first layer's input, with how the model calls each layer (a dry pass)."""
        assert self.layout is not None and self.input_ids is not None
        return capture_activations(self.model, self.stack, self.input_ids, self.config.batch_size, self.device)

    @property
    def stack(self) -> torch.nn.ModuleList:
        """The model's ``nn.ModuleList`` of decoder layers, through which the engine drives them."""
        assert self.layout is not None
        return stack_of(self.model, self.layout)

    # --- score -----------------------------------------------------------------------------------------

    def score(self, jobs: Sequence[ScoringJob], kept: KeptStats | None = None) -> dict[str, dict[str, UnitScore]]:
        """Unit scores of every job. Jobs whose scorer needs statistics share ONE dense pass that gathers
        the union of their needs; the others are scored without touching the data. With ``kept``, the
        same pass also gathers and keeps the pruner's statistics."""
        layout = self.layout
        assert layout is not None
        values: dict[str, dict[str, UnitScore]] = {job.key: {} for job in jobs}
        data_jobs = [job for job in jobs if job.scorer.needs]
        for job in jobs:
            if job not in data_jobs:
                for layer, units in _units_by_layer(job.units).items():
                    with layout.resident(layer):  # a weight-only scorer still reads the weights
                        values[job.key].update({u.name: job.scorer.score(u, {}) for u in units})
        needs = frozenset().union(*(job.scorer.needs for job in data_jobs), kept.needs if kept else ())
        if not needs:
            return values
        by_layer = {job.key: _units_by_layer(job.units) for job in data_jobs}

        def on_stats(index: int, stats: dict[str, LinearStats]) -> None:
            self.routing.observe("scoring", layout.linears[index], stats)
            for job in data_jobs:
                for unit in by_layer[job.key].get(index, []):
                    values[job.key][unit.name] = job.scorer.score(unit, stats)
            if kept is not None:
                kept.keep(index, stats)

        classes = statistic_classes(needs)
        self.observer.start_pass("scoring", layout.num_layers)
        scoring_pass(layout, self.activations(), needs, on_stats, lambda _i: self.observer.advance(), classes)
        self.observer.end_pass()
        return values

    # --- allocate --------------------------------------------------------------------------------------

    def allocate(
        self,
        scorer: ScorerHandle,
        allocator: AllocatorHandle,
        units: list[Unit],
        values: dict[str, UnitScore],
        config: RunConfig | None = None,
    ) -> Allocation:
        """Per-unit sparsities from the scores, for the job ``config`` (the N:M pattern, when given, fixes them)."""
        config = config or self.config
        target = config.target_sparsity
        if allocator.uses_scores:
            scores = scorer.finish(values, target, allocator.granularity)
        else:
            scores = Scores(dict.fromkeys(values, 0.0), higher_is_important=True, spread=0.0)
        missing = [u.name for u in units if u.name not in scores.values]
        if missing:
            raise scorer._broken(f"gave no score for {len(missing)} units (e.g. {missing[0]}) in finish()")
        sparsities = allocator.allocate(scores, units, target)
        pattern = config.parsed_pattern
        if pattern.is_nm:
            # N:M fixes the sparsity of every group of M weights; scores are kept for the report only.
            note = f"{pattern} fixes every unit at {target:g}; allocation not applied"
            return Allocation(units, values, scores, dict.fromkeys(sparsities, target), note)
        return Allocation(units, values, scores, sparsities)

    # --- search ----------------------------------------------------------------------------------------

    def search(
        self,
        scorer: ScorerHandle,
        allocator: AllocatorHandle,
        pruner: PrunerHandle,
        allocation: Allocation,
        config: RunConfig | None = None,
        state_file: Path | None = None,
    ) -> Allocation:
        """Let a scorer that declares ``search`` refine ``allocation`` on the model; see
        :class:`~lsa_framework.types.SearchContext`. Other scorers, and N:M runs (the pattern fixes every
        sparsity), get ``allocation`` back unchanged. The model is dense again afterwards."""
        from lsa_framework.engine.search import CandidateModel, KLFitness, ProgressReporter

        config = config or self.config
        if not scorer.searches or not allocator.uses_scores or config.parsed_pattern.is_nm:
            return allocation
        layout, loaded = self.layout, self.loaded
        assert layout is not None and loaded is not None and self.input_ids is not None
        if loaded.disk is not None:
            raise BadInputError(
                f"The {scorer.name} scorer prunes and runs the model hundreds of times, which --offload disk "
                "would read from disk each time; run it without --offload."
            )
        if state_file is not None:  # marked as lsaf's own, so that a resume or a cleanup may remove it
            make_folder(state_file.parent)
            (state_file.parent / PARTIAL_MARKER).touch()
        stats = self.dense_statistics(pruner.needs)
        self.keep_dense()
        assert self._dense is not None
        target = config.target_sparsity
        units = allocation.units
        sizes = {u.name: u.numel for u in units}
        candidates = CandidateModel(layout, units, pruner, stats.by_layer, self._dense, config.parsed_pattern)
        documents = self.dataset.documents("calibration")
        fitness = KLFitness(
            self.model, candidates, self.tokenizer, documents, int(self.input_ids.shape[1]), layout.bos_token_id,
            self.device,
        )  # fmt: skip
        progress = ProgressReporter(self.observer, "search")
        context = SearchContext(
            units=units,
            sizes=sizes,
            target=target,
            start=dict(allocation.sparsities),
            scores=allocation.scores,
            fitness=fitness,
            allocate=lambda other: allocator.allocate(other, units, target),
            seed=config.seed,
            state_file=state_file,
            resume=state_file is not None,
            progress=progress,
        )
        loaded.place(self.device)
        try:
            found = scorer.search(context)
        finally:
            progress.close()
            candidates.dense_model()
            loaded.place(torch.device("cpu"))
        record = {
            **context.record,
            "fitness_evaluations": fitness.evaluations,
            "fitness_tokens": fitness.tokens,
            "units_pruned": candidates.prunes,
        }
        return Allocation(units, allocation.values, allocation.scores, finalize(found, sizes, target), search=record)

    def dense_statistics(self, needs: frozenset[str]) -> KeptStats:
        """The dense model's statistics ``needs`` (kept from the scoring pass, or gathered now in a pass)."""
        kept = self.search_stats
        if kept is None or not needs <= kept.needs or (needs and not kept.by_layer):
            kept = KeptStats(frozenset(needs))
            if needs:
                self.score([], kept)
            self.search_stats = kept
        return kept

    # --- prune -----------------------------------------------------------------------------------------

    def keep_dense(self) -> None:
        """Remember the dense weights, so that several jobs can each prune the dense model (bench)."""
        assert self.loaded is not None and self.layout is not None
        if self._dense is not None or self.loaded.disk is not None:
            return  # offloaded layers are re-read from their original files instead
        self._dense = {info.name: info.weight.detach().clone() for info in self.layout.all_linears()}

    def restore_dense(self) -> None:
        assert self.loaded is not None and self.layout is not None
        if self.loaded.disk is not None:
            self.loaded.disk.reset()
            return
        if self._dense is None:
            return
        with torch.no_grad():
            for info in self.layout.all_linears():
                info.weight.copy_(self._dense[info.name])

    def prune(
        self,
        pruner: PrunerHandle,
        allocation: Allocation,
        report: RunResult | None,
        checkpoint: Checkpoint | None = None,
        kept: KeptStats | None = None,
        config: RunConfig | None = None,
    ) -> MaskSet:
        """The pruning pass, for the job ``config``; returns every linear's mask.

        Sequential (statistics from the inputs of the already-pruned layers) unless ``kept`` holds the
        dense model's statistics (the basic pipeline): then no forward runs. With a checkpoint, each
        pruned layer is saved as soon as it is done, and a resumed run starts after the last saved layer.
        """
        layout = self.layout
        assert layout is not None
        linear_sparsity = allocation.linear_sparsity
        pattern = (config or self.config).parsed_pattern
        prepared = pruner.prepare(linear_sparsity)
        if report is not None and prepared:
            report.allocation["pruning"] = prepared
        masks = MaskSet()
        start = checkpoint.layers_done if checkpoint is not None else 0

        def restore_layer(index: int) -> None:
            assert checkpoint is not None
            checkpoint.restore_layer(layout, index, masks)

        def prune_layer(index: int, stats: dict[str, LinearStats]) -> None:
            linears = layout.linears[index]
            if pruner.needs:  # a data-free pruner gathers nothing, so nothing was routed
                self.routing.observe("pruning", linears, stats)
            # experts no calibration token reached: a data-free rule, not a pruner without data
            empty = unrouted(linears, stats) if pruner.needs else []
            self.routing.fell_back(empty)
            found = prune_by_magnitude(empty, linear_sparsity, pattern)
            skip = {info.name for info in empty}
            routed = [info for info in linears if info.name not in skip]
            found.update(pruner.prune_layer(routed, stats, linear_sparsity, pattern))
            for name, mask in found.items():
                masks.add(name, mask)
            self.hooks.lsaf_after_layer_pruned(layer_index=index, masks=found, report=report)
            if checkpoint is not None:
                checkpoint.save_layer(layout, index, masks)

        needs = pruner.needs
        self.routing.start_pruning()
        acts = self.activations() if needs and kept is None else None  # no forward for data-free masks
        saved = dict(kept.by_layer) if kept is not None else None  # a copy: the pass drops what it used
        self.observer.start_pass("pruning", layout.num_layers)
        pruning_pass(
            layout,
            acts,
            needs,
            prune_layer,
            lambda _i: self.observer.advance(),
            start,
            restore_layer if checkpoint is not None else None,
            saved_stats=saved,
            classes=statistic_classes(needs),
        )
        self.observer.end_pass()
        return masks

    def unit_records(self, allocation: Allocation) -> list[UnitRecord]:
        """Allocated and realised (zeros counted in the weights) sparsity of every unit."""
        layout = self.layout
        assert layout is not None
        records = []
        for layer, layer_units in _units_by_layer(allocation.units).items():
            with layout.resident(layer):
                for u in layer_units:
                    zeros = sum(int((info.weight == 0).sum()) for info in u.linears)
                    score, sparsity = allocation.scores.values[u.name], allocation.sparsities[u.name]
                    records.append(UnitRecord(u.name, u.layer, u.numel, score, sparsity, zeros / u.numel))
        order = {u.name: i for i, u in enumerate(allocation.units)}
        return sorted(records, key=lambda r: order[r.name])

    # --- evaluate --------------------------------------------------------------------------------------

    def evaluate(self, evaluators: Sequence[EvaluatorHandle], config: RunConfig | None = None) -> dict[str, float]:
        """Every evaluator's metrics on the model as it is now."""
        assert self.loaded is not None
        config = config or self.config
        seqlen = int(self.input_ids.shape[1]) if self.input_ids is not None else self.seqlen()
        context = EvalContext(config=config, dataset=self.dataset.instance, layout=self.layout, seqlen=seqlen)
        metrics: dict[str, float] = {}
        self.loaded.place(self.device)
        try:
            for evaluator in evaluators:
                self.observer.message(f"evaluating {evaluator.name}")
                metrics.update(evaluator.evaluate(self.model, self.tokenizer, context))
        finally:
            self.loaded.place(torch.device("cpu"))
        return metrics

    def dense_metrics(self, evaluators: Sequence[EvaluatorHandle], config: RunConfig | None = None) -> dict:
        """The evaluators on the dense model: once per session and evaluator settings, and remembered
        in lsaf's cache by the model's content hash, so repeated runs of one model pay it once."""
        config = config or self.config
        key = self._dense_key(evaluators, config)
        if key not in self._dense_metrics:
            cached = _DenseCache.get(key) if self.model_sha256 else None
            if cached is None:
                self.observer.message("evaluating the dense model")
                cached = self.evaluate(evaluators, config)
                if self.model_sha256:
                    _DenseCache.put(key, cached)
            self._dense_metrics[key] = cached
        return dict(self._dense_metrics[key])

    def _dense_key(self, evaluators: Sequence[EvaluatorHandle], config: RunConfig) -> str:
        from lsa_framework import __version__

        payload = {
            "lsa_framework": __version__,
            "model_sha256": self.model_sha256,
            "dtype": config.dtype,
            "device": str(self.device),
            "dataset": [self.dataset.name, config.calibration, config.calibration_opts],
            "seqlen": int(self.input_ids.shape[1]) if self.input_ids is not None else config.seqlen,
            "evaluators": [
                [e.name, e.instance.options.model_dump(mode="json"), code_digest(e.instance)] for e in evaluators
            ],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]

    # --- recover ---------------------------------------------------------------------------------------

    def recover(
        self,
        recoverer: RecovererHandle,
        result: RunResult,
        checkpoint_dir: Path | None = None,
        resume: bool = False,
    ) -> Any:
        """Fine-tune the pruned model on the calibration windows, keeping every pruned weight zero.

        Records the recovery (losses, time, memory, the masks before and after) in ``result.extra``.
        """
        from lsa_framework.recovery.masks import mask_hashes, masks_from_zeros

        layout, loaded = self.layout, self.loaded
        assert layout is not None and loaded is not None and self.input_ids is not None
        if loaded.disk is not None:
            raise BadInputError(
                "Recovery trains the whole model in memory, which --offload disk avoids; run it without --offload."
            )
        names = [info.name for info in layout.all_linears()]
        if any(info.prunable is not info.module or not isinstance(info.module, torch.nn.Linear) for info in
               layout.all_linears()):  # fmt: skip
            raise BadInputError(
                "Recovery supports models whose pruned weights are plain nn.Linear layers; this model has others "
                "(transformers Conv1D or fused experts), so recover it without lsaf or prune another family."
            )
        before = mask_hashes(masks_from_zeros(self.model, names))
        steps = int(getattr(recoverer.instance.options, "steps", 0)) or 1
        self.observer.start_pass("recovery", steps)
        context = RecoveryContext(
            windows=self.input_ids,
            linear_names=names,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            on_step=lambda _step, _loss: self.observer.advance(),
        )
        loaded.place(self.device)
        try:
            recovered = recoverer.recover(self.model, context)
        finally:
            loaded.place(torch.device("cpu"))
            self.observer.end_pass()
        after = dict(recovered.mask_sha256)
        training = recovered.training
        result.extra["recovery"] = {
            "method": recoverer.name,
            "options": recoverer.instance.options.model_dump(mode="json"),
            "windows": list(self.input_ids.shape),
            "losses": training.losses,
            "resumed_from": training.resumed_from,
            "autocast": training.autocast,
            "seconds": training.seconds,
            "seconds_per_step": training.seconds_per_step,
            "peak_rss_mb": training.peak_rss_mb,
            "masks_unchanged": before == after,
            "mask_sha256": after,
            "sparsity": recovered.sparsity,
            "new_zeros": recovered.new_zeros,
        }
        return recovered

    # --- one job ---------------------------------------------------------------------------------------

    def run_job(
        self,
        plugins: Plugins,
        result: RunResult,
        checkpoint: Checkpoint | None = None,
        values: dict[str, UnitScore] | None = None,
        kept: KeptStats | None = None,
        allocation: Allocation | None = None,
    ) -> MaskSet:
        """Score (unless ``values`` are given), allocate (unless ``allocation`` is given), search (for a
        scorer that declares it), prune and evaluate one job, into ``result``."""
        config = result.config
        self.hooks.lsaf_before_run(config=config)
        self.load(result)
        assert self.layout is not None
        if checkpoint is not None:
            checkpoint.bind_model(self.model_sha256, config.model)
        units = plugins.allocator.units(self.layout)
        self.calibrate(result)
        self.describe(result)
        if config.pipeline == "basic" and kept is None:
            kept = KeptStats(plugins.pruner.needs)  # the basic pipeline: one forward in all
        searching = plugins.scorer.searches and plugins.allocator.uses_scores and allocation is None
        if searching and self.search_stats is None:
            # a search prunes candidates from the dense statistics: gather them in the scoring pass
            self.search_stats = kept if kept is not None else KeptStats(plugins.pruner.needs)
        with stage(result, "scoring"):
            values = self._job_scores(plugins, units, checkpoint, values, kept, searching, allocation is not None)
        with stage(result, "allocation"):
            if allocation is None:
                assert values is not None
                allocation = self.allocate(plugins.scorer, plugins.allocator, units, values, config)
        if searching:
            with stage(result, "search"):
                state_file = checkpoint.folder / "search.json" if checkpoint is not None and checkpoint.folder else None
                allocation = self.search(plugins.scorer, plugins.allocator, plugins.pruner, allocation, config,
                                         state_file)  # fmt: skip
        result.allocation = allocation.summary(plugins.allocator.granularity, plugins.allocator.uses_scores)
        self.hooks.lsaf_after_scoring(scores=allocation.scores, report=result)
        self.hooks.lsaf_after_allocation(sparsities=allocation.sparsities, report=result)
        result.headlines = {e.name: e.headline for e in plugins.evaluators}
        result.summary = [p for e in plugins.evaluators for p in e.summary]
        if config.eval_dense and plugins.evaluators:
            with stage(result, "dense evaluation"):
                result.dense_metrics = self.dense_metrics(plugins.evaluators, config)
        with stage(result, "pruning"):
            masks = self.prune(plugins.pruner, allocation, result, checkpoint, kept, config)
            result.mask_hashes = dict(masks.hashes)
        if self.routing:
            result.extra["routing"] = self.routing.to_json()
        result.units = self.unit_records(allocation)
        with stage(result, "evaluation"):
            result.metrics = self.evaluate(plugins.evaluators, config)
        if plugins.recoverer is not None:
            self._recover_job(plugins, result, checkpoint)
        self.hooks.lsaf_after_run(result=result)
        return masks

    def _job_scores(
        self,
        plugins: Plugins,
        units: list[Unit],
        checkpoint: Checkpoint | None,
        values: dict[str, UnitScore] | None,
        kept: KeptStats | None,
        searching: bool,
        allocated: bool,
    ) -> dict[str, UnitScore] | None:
        """run_job's scoring stage: the unit scores (given, resumed or computed), with the dense statistics
        that the basic pipeline or a search needs gathered in the same pass, so that no job runs two."""
        values = values if values is not None else (checkpoint.scores if checkpoint is not None else None)
        if not plugins.allocator.uses_scores:
            values = dict.fromkeys((u.name for u in units), 0.0)
        gather = kept if kept is not None else (self.search_stats if searching else None)
        needs_pass = gather is not None and gather.needs and not gather.by_layer
        if values is None and not allocated:
            scorer = plugins.scorer if plugins.allocator.uses_scores else _no_scores(plugins.scorer)
            values = self.score([ScoringJob("run", scorer, units)], gather)["run"]
            if checkpoint is not None:
                checkpoint.save_scores(values)
        elif needs_pass and not allocated:
            assert gather is not None
            self.score([], gather)  # scores known (a resume): only the dense statistics the pruner needs
        elif kept is not None and kept.needs and not kept.by_layer:
            self.score([], kept)  # the pruner's dense statistics, for an allocation given from outside
        return values

    def _recover_job(self, plugins: Plugins, result: RunResult, checkpoint: Checkpoint | None) -> None:
        """run_job's recovery stage, then the evaluation again (the metrics before it are kept beside)."""
        assert plugins.recoverer is not None
        config = result.config
        folder = checkpoint.folder / "recovery" if checkpoint is not None and checkpoint.folder else None
        with stage(result, "recovery"):
            self.recovered = self.recover(plugins.recoverer, result, folder, config.resume)
        with stage(result, "evaluation after recovery"):
            result.extra["recovery"]["metrics_before"] = result.metrics
            result.metrics = self.evaluate(plugins.evaluators, config)


def _no_scores(scorer: ScorerHandle) -> ScorerHandle:
    """A stand-in for a scorer whose scores the allocator ignores: no statistics, no work."""
    return ScorerHandle(scorer.kind, scorer.name, scorer.distribution, _Zero())


class _Zero:
    needs: frozenset[str] = frozenset()

    def score(self, unit: Unit, stats: Any) -> float:
        return 0.0


def stack_of(model: Any, layout: Layout) -> torch.nn.ModuleList:
    """The model's ModuleList holding the layout's layers (the one the model iterates)."""
    if isinstance(layout.stack, torch.nn.ModuleList):
        return layout.stack
    first = layout.layers[0]
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == len(layout.layers) and module[0] is first:
            return module
    raise RuntimeError("the decoder layers are no longer in the model")


def _maybe_stage(result: RunResult | None, name: str) -> AbstractContextManager[None]:
    """``stage(result, name)`` when there is a result to record into."""
    return stage(result, name) if result is not None else nullcontext()


def code_digest(instance: object) -> str:
    """The source of the module that defines ``instance``'s class.

    lsaf's version stays the same while an evaluator's code changes (an editable install, a plugin being
    written), and a dense result cached by the old code must not be served to the new one.
    """
    module = inspect.getmodule(type(instance))
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):  # defined interactively: no file to read, so nothing to tell versions apart
        source = ""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class _DenseCache:
    """Dense metrics by their key, in lsaf's cache (one small JSON file)."""

    @staticmethod
    def _path() -> Path:
        from lsa_framework.data import cache_dir

        return cache_dir() / "dense_metrics.json"

    @classmethod
    def _read(cls) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(cls._path().read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @classmethod
    def get(cls, key: str) -> dict[str, float] | None:
        value = cls._read().get(key)
        return dict(value) if isinstance(value, dict) else None

    @classmethod
    def put(cls, key: str, metrics: dict[str, float]) -> None:
        from lsa_framework.storage.atomic import make_folder, write_json

        data = cls._read()
        data[key] = metrics
        try:
            make_folder(cls._path().parent)
            write_json(cls._path(), data)
        except OSError:
            pass  # a read-only cache only costs a re-evaluation next time

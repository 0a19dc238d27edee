"""Resolved plugins: typed handles through which the engine calls every plugin.

A handle knows its plugin's name and package, so an unexpected exception inside a plugin becomes a
:class:`~lsa_framework.errors.PluginError` that names both. Options are validated against the plugin's
``Options`` model when it is resolved, before any model is loaded; optional capabilities are read from
the class's declared ``capabilities``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from lsa_framework import registry
from lsa_framework.config import RunConfig, plugin_options
from lsa_framework.errors import BadInputError, LsafError, PluginError
from lsa_framework.types import (
    EvalContext,
    ExportContext,
    Layout,
    LinearInfo,
    LinearStats,
    Pattern,
    Scores,
    SearchContext,
    Unit,
    UnitScore,
)


@dataclass
class Handle:
    """A plugin instance with the package it came from."""

    kind: str
    name: str
    distribution: str
    instance: Any

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(getattr(type(self.instance), "capabilities", frozenset()))

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """An unexpected exception in the plugin becomes one sentence naming the plugin and its package."""
        try:
            yield
        except LsafError:
            raise
        except Exception as exc:
            raise PluginError(
                f"The {self.kind[:-1]} {self.name!r} from package {self.distribution!r} failed in {what}() with "
                f"{type(exc).__name__}: {exc}; report it to that package's authors."
            ) from exc

    def _broken(self, what: str) -> PluginError:
        return PluginError(f"The {self.kind[:-1]} {self.name!r} from package {self.distribution!r} {what}.")


class ScorerHandle(Handle):
    @property
    def needs(self) -> frozenset[str]:
        return frozenset(self.instance.needs)

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> UnitScore:
        """One number per unit, or a list of numbers (e.g. an error curve) for scorers that return one."""
        with self.guard("score"):
            value = self.instance.score(unit, stats)
            if isinstance(value, torch.Tensor):
                value = value.tolist() if value.dim() > 0 else float(value)
            if isinstance(value, (list, tuple)):
                return [float(v) for v in value]
            return float(value)

    def finish(self, values: Mapping[str, UnitScore], target: float, granularity: str) -> Scores:
        with self.guard("finish"):
            scores: Scores = self.instance.finish(values, target, granularity)
            return scores

    @property
    def searches(self) -> bool:
        """Whether the scorer declares ``search``: it refines its allocation on the model itself."""
        return "search" in self.capabilities

    def search(self, context: SearchContext) -> dict[str, float]:
        with self.guard("search"):
            found = dict(self.instance.search(context))
        missing = {u.name for u in context.units} - set(found)
        if missing:
            raise self._broken(f"returned no sparsity for {len(missing)} units from search(); fix the scorer")
        return {name: float(value) for name, value in found.items()}


class AllocatorHandle(Handle):
    @property
    def granularity(self) -> str:
        return str(self.instance.granularity)

    @property
    def uses_scores(self) -> bool:
        """False for an allocator that declares it ignores scores: no scoring pass is run for it."""
        return bool(getattr(type(self.instance), "uses_scores", True))

    def units(self, layout: Layout) -> list[Unit]:
        with self.guard("units"):
            units = list(self.instance.units(layout))
        covered = [info.name for unit in units for info in unit.linears]
        if len(covered) != len(set(covered)):
            raise self._broken("put a linear in two units; give every linear exactly one unit")
        return units

    def allocate(self, scores: Scores, units: Sequence[Unit], target: float) -> dict[str, float]:
        sizes = {u.name: u.numel for u in units}
        with self.guard("allocate"):
            sparsities: dict[str, float] = dict(self.instance.allocate(scores, sizes, target))
        missing = set(sizes) - set(sparsities)
        if missing:
            raise self._broken(
                f"gave no sparsity for {len(missing)} units (e.g. {sorted(missing)[0]}); fix the allocator"
            )
        return sparsities


class PrunerHandle(Handle):
    @property
    def needs(self) -> frozenset[str]:
        return frozenset(self.instance.needs)

    @property
    def updates_weights(self) -> bool:
        return "updates_weights" in self.capabilities

    def prepare(self, sparsities: Mapping[str, float]) -> dict[str, Any]:
        """Tell a pruner that declares ``prepare`` the whole allocation (linear name → sparsity) before a
        pruning pass; what it returns is recorded in run.json (empty for the others)."""
        if "prepare" not in self.capabilities:
            return {}
        with self.guard("prepare"):
            return dict(self.instance.prepare(dict(sparsities)) or {})

    def prune_layer(
        self,
        linears: Sequence[LinearInfo],
        stats: Mapping[str, LinearStats],
        sparsity: Mapping[str, float],
        pattern: Pattern,
    ) -> dict[str, torch.Tensor]:
        """Prune one layer's linears (those with a sparsity); their masks by name.

        A pruner that declares ``prune_group`` gets each input group (linears that share one input and
        so one set of statistics) in a single call, to share work such as SparseGPT's inverse Hessian;
        the others get one ``prune`` call per linear.
        """
        groups: dict[str, list[LinearInfo]] = {}
        for info in linears:
            if info.name in sparsity:
                groups.setdefault(info.input_group, []).append(info)
        masks: dict[str, torch.Tensor] = {}
        for members in groups.values():
            if "prune_group" in self.capabilities:
                prunables = [info.prunable for info in members]
                with self.guard("prune_group"):
                    found = list(
                        self.instance.prune_group(
                            prunables, stats[members[0].name], [sparsity[i.name] for i in members], pattern
                        )
                    )
                if len(found) != len(members):
                    raise self._broken(
                        f"returned {len(found)} masks for {len(members)} linears in prune_group(); fix the pruner"
                    )
                masks.update(zip((info.name for info in members), found, strict=True))
            else:
                for info in members:
                    with self.guard("prune"):
                        masks[info.name] = self.instance.prune(
                            info.prunable, stats[info.name], sparsity[info.name], pattern
                        )
        return masks


class EvaluatorHandle(Handle):
    @property
    def headline(self) -> tuple[str, bool | None]:
        """The metric that stands for this evaluator in tables, and whether lower is better."""
        cls = type(self.instance)
        return str(getattr(cls, "headline", self.name)), getattr(cls, "lower_is_better", None)

    @property
    def summary(self) -> tuple[str, ...]:
        """Glob patterns of the metrics worth a row in reports (default: the headline)."""
        return tuple(getattr(type(self.instance), "summary", (self.headline[0],)))

    def check(self, config: RunConfig) -> None:
        if "check" in self.capabilities:
            with self.guard("check"):
                self.instance.check(config)

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, float]:
        with self.guard("evaluate"):
            return {k: float(v) for k, v in self.instance.evaluate(model, tokenizer, context).items()}


class DatasetHandle(Handle):
    def documents(self, split: str) -> list[str]:
        with self.guard("documents"):
            return list(self.instance.documents(split))


class RecovererHandle(Handle):
    def recover(self, model: Any, context: Any) -> Any:
        with self.guard("recover"):
            return self.instance.recover(model, context)

    def save_extra(self, recovered: Any, folder: Any) -> list[str]:
        if "extra_output" not in self.capabilities:
            return []
        with self.guard("save_extra"):
            return list(self.instance.save_extra(recovered, folder))


class ExporterHandle(Handle):
    def export(self, context: ExportContext, folder: Any) -> None:
        with self.guard("export"):
            self.instance.export(context, folder)


HANDLES: dict[str, type[Handle]] = {
    "scorers": ScorerHandle,
    "allocators": AllocatorHandle,
    "pruners": PrunerHandle,
    "evaluators": EvaluatorHandle,
    "datasets": DatasetHandle,
    "exporters": ExporterHandle,
    "recoverers": RecovererHandle,
}


def resolve(kind: str, name: str, options: dict[str, Any]) -> Any:
    """The handle of plugin ``name`` of ``kind``, built with validated ``options``."""
    entry = registry.lookup(kind, name)
    validated = plugin_options(kind, name, options)
    handle = HANDLES[kind](kind, name, entry.distribution, None)
    with handle.guard("__init__"):
        handle.instance = entry.cls(validated)
    return handle


def resolve_dataset(config: RunConfig) -> DatasetHandle:
    """``--calibration`` is a dataset name, or a spec (e.g. a file path) that a dataset plugin claims
    through its declared ``options_for(spec)`` classmethod."""
    datasets = registry.collect("datasets")
    if config.calibration not in datasets:
        for entry in datasets.values():
            if "claims_specs" in frozenset(getattr(entry.cls, "capabilities", ())):
                options = entry.cls.options_for(config.calibration)
                if options is not None:
                    return resolve("datasets", entry.name, {**options, **config.calibration_opts})
    return resolve("datasets", config.calibration, config.calibration_opts)


@dataclass
class Plugins:
    """Every plugin a run uses, resolved and validated."""

    scorer: ScorerHandle
    allocator: AllocatorHandle
    pruner: PrunerHandle
    dataset: DatasetHandle
    evaluators: list[EvaluatorHandle]
    exporters: list[ExporterHandle]
    recoverer: RecovererHandle | None = None


def resolve_evaluators(config: RunConfig) -> list[EvaluatorHandle]:
    unknown_eval_opts = set(config.eval_opts) - set(config.eval)
    if unknown_eval_opts:
        raise BadInputError(
            f"--eval-opt given for {', '.join(sorted(unknown_eval_opts))}, which is not in --eval "
            f"({', '.join(config.eval)}); add it to --eval or drop the option."
        )
    evaluators = [resolve("evaluators", n, config.eval_opts.get(n, {})) for n in config.eval]
    for evaluator in evaluators:
        evaluator.check(config)  # a setting it cannot use is refused before any work
    return evaluators


def resolve_plugins(config: RunConfig) -> Plugins:
    return Plugins(
        scorer=resolve("scorers", config.scorer, config.scorer_opts),
        allocator=resolve("allocators", config.allocator, config.allocator_opts),
        pruner=resolve("pruners", config.pruner, config.pruner_opts),
        dataset=resolve_dataset(config),
        evaluators=resolve_evaluators(config),
        exporters=[resolve("exporters", n, config.export_opts.get(n, {})) for n in config.export],
        recoverer=resolve("recoverers", config.recover, config.recover_opts) if config.recover else None,
    )

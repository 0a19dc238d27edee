"""The whole extension contract of lsa_framework, in one file.

A plugin is a module or object with functions decorated by :data:`hookimpl`, found through the
``lsa_framework`` entry-point group (or registered in tests with ``registry.plugin_manager().register``).
Registration hooks receive a ``register`` callable and call it once per class they contribute; the
core owns the registry, name checks and did-you-mean. Lifecycle hooks observe a run and may record
into its report through ``report.extra``.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT_NAME = "lsa_framework"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def lsaf_register_scorers(register: Any) -> None:
    """Register scorer classes: call ``register(cls)`` for each.

    A scorer class has ``name``, an ``Options`` pydantic model, ``needs`` (statistics it reads) and
    ``score(unit, stats) -> float`` plus ``finish(values, target, granularity) -> Scores``.
    """


@hookspec
def lsaf_register_allocators(register: Any) -> None:
    """Register allocator classes: call ``register(cls)`` for each.

    An allocator class has ``name``, ``Options``, ``units(layout) -> list[Unit]`` and
    ``allocate(scores, sizes, target) -> dict[unit name, sparsity]``.
    """


@hookspec
def lsaf_register_pruners(register: Any) -> None:
    """Register pruner classes: call ``register(cls)`` for each.

    A pruner class has ``name``, ``Options``, ``needs`` and
    ``prune(linear, stats, sparsity, pattern) -> mask`` that zeroes weights in place.
    """


@hookspec
def lsaf_register_evaluators(register: Any) -> None:
    """Register evaluator classes: call ``register(cls)`` for each.

    An evaluator class has ``name``, ``Options`` and ``evaluate(model, tokenizer, context) -> metrics``.
    """


@hookspec
def lsaf_register_datasets(register: Any) -> None:
    """Register text sources for calibration and evaluation: call ``register(cls)`` for each.

    A dataset class has ``name``, ``Options`` and ``documents(split) -> list[str]`` where split is
    ``"calibration"`` or ``"evaluation"``; the two splits must not share text.
    """


@hookspec
def lsaf_register_architectures(register: Any) -> None:
    """Register architecture classes that find the layout of a model: call ``register(cls)``.

    An architecture class has ``name``, ``matches(model) -> bool`` and ``layout(model) -> Layout``.
    """


@hookspec
def lsaf_before_run(config: Any) -> None:
    """Called once the configuration is validated, before the model is loaded."""


@hookspec
def lsaf_after_scoring(scores: Any, report: Any) -> None:
    """Called with the unit ``Scores`` after the scoring pass."""


@hookspec
def lsaf_after_allocation(sparsities: dict[str, float], report: Any) -> None:
    """Called with the per-unit sparsities after allocation."""


@hookspec
def lsaf_after_layer_pruned(layer_index: int, masks: dict[str, Any], report: Any) -> None:
    """Called after each decoder layer is pruned, with the masks of its linears."""


@hookspec
def lsaf_after_run(result: Any) -> None:
    """Called with the ``RunResult`` after evaluation, before the output is written."""

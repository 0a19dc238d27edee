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
"""Marks the hook specifications below; used by lsa_framework only."""
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorate a plugin's hook functions with ``@hookimpl``; they are matched to the specs by name."""


@hookspec
def lsaf_register_scorers(register: Any) -> None:
    """Register scorer classes: call ``register(cls)`` once for each.

    A scorer class (protocol :class:`lsa_framework.types.Scorer`) has a ``name`` (what ``--scorer``
    takes), an ``Options`` model (a :class:`~lsa_framework.types.PluginOptions` subclass), ``needs``
    (the names of the registered statistics it reads, e.g. ``{"gram"}``; empty skips the scoring
    pass), ``score(unit, stats) -> float`` called once per unit on the dense model, and
    ``finish(values, target, granularity) -> Scores`` that adds the direction and spread.

    :param register: callable taking one plugin class; the core checks the name and keeps the first.
    """


@hookspec
def lsaf_register_allocators(register: Any) -> None:
    """Register allocator classes: call ``register(cls)`` once for each.

    An allocator class (protocol :class:`lsa_framework.types.Allocator`) has a ``name`` (what
    ``--allocator`` takes), ``Options``, ``granularity`` (``"layer"``, ``"block"`` or
    ``"projection"``: which defaults a scorer applies), ``units(layout) -> list[Unit]`` that puts every
    prunable linear in exactly one unit, and ``allocate(scores, sizes, target) -> dict[str, float]``
    giving every unit a sparsity whose parameter-weighted mean is ``target``; end it with
    :func:`lsa_framework.finalize` to get that exactly.

    :param register: callable taking one plugin class; the core checks the name and keeps the first.
    """


@hookspec
def lsaf_register_pruners(register: Any) -> None:
    """Register pruner classes: call ``register(cls)`` once for each.

    A pruner class (protocol :class:`lsa_framework.types.Pruner`) has a ``name`` (what ``--pruner``
    takes), ``Options``, ``needs`` (statistics gathered from the inputs of the already-pruned layers)
    and ``prune(linear, stats, sparsity, pattern) -> mask``, which zeroes weights of ``linear`` in
    place (and may update the others) and returns the boolean mask of pruned weights (True = pruned).

    :param register: callable taking one plugin class; the core checks the name and keeps the first.
    """


@hookspec
def lsaf_register_evaluators(register: Any) -> None:
    """Register evaluator classes: call ``register(cls)`` once for each.

    An evaluator class (protocol :class:`lsa_framework.types.Evaluator`) has a ``name`` (what
    ``--eval`` lists), ``Options`` (set with ``--eval-opt NAME.KEY=VALUE``) and
    ``evaluate(model, tokenizer, context) -> dict[str, float]``; the metrics go into run.json.

    :param register: callable taking one plugin class; the core checks the name and keeps the first.
    """


@hookspec
def lsaf_register_datasets(register: Any) -> None:
    """Register text sources for calibration and evaluation: call ``register(cls)`` once for each.

    A dataset class has a ``name`` (what ``--calibration`` takes), ``Options`` and
    ``documents(split) -> list[str]`` where ``split`` is ``"calibration"`` or ``"evaluation"``; the
    two splits must not share text. An optional classmethod ``options_for(spec) -> dict | None``
    claims ``--calibration`` values that are not plugin names (the built-in ``file`` dataset claims
    paths) and returns the options to build the dataset with.

    :param register: callable taking one plugin class; the core checks the name and keeps the first.
    """


@hookspec
def lsaf_register_architectures(register: Any) -> None:
    """Register architecture classes that find the layout of a model: call ``register(cls)``.

    The layout (decoder layers, prunable linears, input groups, attention/MLP blocks) is found
    generically from the module tree and one traced call. An architecture class (protocol
    :class:`lsa_framework.types.Architecture`) corrects only what that cannot tell: it has a
    ``name``, ``matches(model) -> bool`` and ``refine(model, layout) -> Layout``. Every matching
    architecture refines the layout, in registration order.

    :param register: callable taking one plugin class; the core checks the name and keeps the first.
    """


@hookspec
def lsaf_register_exporters(register: Any) -> None:
    """Register exporters, which write parts of the output folder: call ``register(cls)`` once for each.

    An exporter class (protocol :class:`lsa_framework.types.Exporter`) has a ``name`` (what ``--export``
    lists), ``Options`` and ``export(context, folder)``, which writes into ``folder`` (the output's
    ``<name>/`` subfolder, inside the temporary folder that is renamed into place at the end) from an
    :class:`~lsa_framework.types.ExportContext`.

    :param register: callable taking one plugin class; the core checks the name and keeps the first.
    """


@hookspec
def lsaf_register_recoverers(register: Any) -> None:
    """Register recoverers, which fine-tune a pruned model keeping its masks: call ``register(cls)``.

    A recoverer class (protocol :class:`lsa_framework.types.Recoverer`) has a ``name`` (what
    ``--recover`` and ``lsaf recover --method`` take), ``Options`` and ``recover(model, context)``,
    which trains the model in place on ``context.windows`` (calibration windows) so that every weight
    that is zero in ``context.linear_names`` stays exactly zero.

    :param register: callable taking one plugin class; the core checks the name and keeps the first.
    """


@hookspec
def lsaf_register_statistics(register: Any) -> None:
    """Register activation statistics that scorers and pruners may name in ``needs``: call ``register(cls)``.

    A statistic class (protocol :class:`lsa_framework.types.Statistic`) has a ``name``,
    ``__init__(in_features, device)``, ``add(x, batch)`` receiving every batch of one input group's
    inputs as (tokens, in_features) float32, and ``result(nsamples, ntokens) -> Tensor``. The engine
    gathers each needed statistic once per input group, in the same forward as the others.

    :param register: callable taking one plugin class; the core checks the name and keeps the first.
    """


@hookspec
def lsaf_before_run(config: Any) -> None:
    """Called once the configuration is validated, before the model is loaded.

    :param config: the validated :class:`~lsa_framework.config.RunConfig` (read it, do not change it).
    """


@hookspec
def lsaf_after_scoring(scores: Any, report: Any) -> None:
    """Called with the unit scores after the scoring pass, before allocation.

    :param scores: the :class:`~lsa_framework.types.Scores` the scorer returned.
    :param report: the ``RunResult`` being built; a plugin may record into ``report.extra``
        (a dict written to run.json under ``"extra"``).
    """


@hookspec
def lsaf_after_allocation(sparsities: dict[str, float], report: Any) -> None:
    """Called with the per-unit sparsities after allocation, before pruning.

    :param sparsities: unit name → sparsity, as the pruner will apply it.
    :param report: the ``RunResult`` being built (record into ``report.extra``).
    """


@hookspec
def lsaf_after_layer_pruned(layer_index: int, masks: dict[str, Any], report: Any) -> None:
    """Called after each decoder layer is pruned, with the masks of its linears.

    :param layer_index: index of the decoder layer just pruned.
    :param masks: linear name → boolean mask of its pruned weights (True = pruned).
    :param report: the ``RunResult`` being built, or None when pruning runs outside ``lsaf run``.
    """


@hookspec
def lsaf_after_run(result: Any) -> None:
    """Called after evaluation, before the output folder is written.

    :param result: the ``RunResult``: units, metrics, timings; changes to ``result.extra`` reach run.json.
    """

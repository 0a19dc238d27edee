"""The registry: built-ins and third-party plugins through the same hooks; clear lookup errors."""

from __future__ import annotations

import types
import warnings

import pluggy
import pytest

from lsa_framework import hookimpl, registry
from lsa_framework.errors import UnknownPluginError


def fresh_manager() -> pluggy.PluginManager:
    return registry.new_plugin_manager(entry_points=False)


def test_builtins_register_through_hooks():
    expected = {
        "scorers": {"uniform", "lse", "owl", "dlp", "rd", "evo"},
        "allocators": {"layer", "block", "projection"},
        "pruners": {"magnitude", "wanda", "sparsegpt"},
        "evaluators": {"perplexity", "sparsity", "zeroshot"},
        "exporters": {"safetensors", "masks"},
        "statistics": {"gram", "input_sq_norm", "residual_energy"},
        "datasets": {"builtin", "file", "wikitext2", "c4"},
    }
    for kind, names in expected.items():
        found = registry.collect(kind, fresh_manager())
        assert names <= set(found), kind
        assert all(found[n].distribution == registry.BUILTIN_DISTRIBUTION for n in names)


def test_unknown_name_suggests_and_lists():
    with pytest.raises(UnknownPluginError) as info:
        registry.lookup("pruners", "wandaa", fresh_manager())
    message = str(info.value)
    assert "Did you mean 'wanda'?" in message
    assert "magnitude" in message and "sparsegpt" in message


def test_third_party_plugin_is_found_and_broken_one_is_skipped():
    pm = fresh_manager()

    class DepthAllocator:
        name = "depth-test"
        granularity = "layer"
        Options = registry.collect("allocators", fresh_manager())["layer"].cls.Options

        def __init__(self, options=None):
            pass

        def units(self, layout):
            return []

        def allocate(self, scores, sizes, target):
            return {}

    good = types.ModuleType("good_plugin")
    good.lsaf_register_allocators = hookimpl(lambda register: register(DepthAllocator))  # type: ignore[attr-defined]

    def broken_register(register):
        raise ImportError("missing dependency")

    bad = types.ModuleType("bad_plugin")
    bad.lsaf_register_allocators = hookimpl(broken_register)  # type: ignore[attr-defined]
    pm.register(good, name="good_plugin")
    pm.register(bad, name="bad_plugin")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = registry.collect("allocators", pm)
    assert "depth-test" in found and "layer" in found
    assert any("bad_plugin" in str(w.message) for w in caught)


def test_duplicate_name_keeps_builtin_and_warns():
    pm = fresh_manager()

    builtin = registry.collect("pruners", fresh_manager())["wanda"].cls

    class FakeWanda(builtin):  # type: ignore[misc,valid-type]
        name = "wanda"

    dup = types.ModuleType("dup_plugin")
    dup.lsaf_register_pruners = hookimpl(lambda register: register(FakeWanda))  # type: ignore[attr-defined]
    pm.register(dup, name="dup_plugin")
    with pytest.warns(registry.PluginLoadWarning, match="already registered"):
        found = registry.collect("pruners", pm)
    assert found["wanda"].cls is not FakeWanda


def test_a_plugin_missing_part_of_its_contract_is_reported_with_its_package():
    pm = fresh_manager()

    class HalfScorer:  # no `needs`, no `finish`
        name = "half"
        Options = registry.collect("scorers", fresh_manager())["uniform"].cls.Options

        def score(self, unit, stats):
            return 0.0

    class WrongCapability:
        name = "grouping"
        needs = frozenset()
        capabilities = frozenset({"prune_group"})  # declared, but no prune_group method
        Options = HalfScorer.Options

        def prune(self, linear, stats, sparsity, pattern):
            return None

    plugin = types.ModuleType("acme_plugin")
    plugin.lsaf_register_scorers = hookimpl(lambda register: register(HalfScorer))  # type: ignore[attr-defined]
    plugin.lsaf_register_pruners = hookimpl(lambda register: register(WrongCapability))  # type: ignore[attr-defined]
    pm.register(plugin, name="acme_plugin")
    with pytest.warns(registry.PluginLoadWarning) as caught:
        scorers = registry.collect("scorers", pm)
        pruners = registry.collect("pruners", pm)
    assert "half" not in scorers and "grouping" not in pruners and "lse" in scorers
    text = " ".join(str(w.message) for w in caught)
    assert "'half'" in text and "no 'finish'" in text and "no 'needs'" in text
    assert "declares 'prune_group' but has no prune_group() method" in text
    assert "acme_plugin" in text

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
        "scorers": {"uniform", "lse", "owl", "dlp"},
        "allocators": {"layer", "block", "projection"},
        "pruners": {"magnitude", "wanda", "sparsegpt"},
        "evaluators": {"perplexity", "sparsity"},
        "architectures": {"llama"},
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

    class FakeWanda:
        name = "wanda"

    dup = types.ModuleType("dup_plugin")
    dup.lsaf_register_pruners = hookimpl(lambda register: register(FakeWanda))  # type: ignore[attr-defined]
    pm.register(dup, name="dup_plugin")
    with pytest.warns(registry.PluginLoadWarning, match="already registered"):
        found = registry.collect("pruners", pm)
    assert found["wanda"].cls is not FakeWanda

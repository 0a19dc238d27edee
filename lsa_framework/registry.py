"""The plugin registry: built-ins and third-party packages, found and looked up the same way.

Built-in plugins are the modules in :data:`DEFAULT_PLUGINS`; third-party ones come from the
``lsa_framework`` entry-point group. Both implement the registration hooks of
:mod:`lsa_framework.hookspecs`; nothing here knows any plugin by name.

``LSAF_LOAD_PLUGINS=dist1,dist2`` restricts which distributions' entry points load (empty: none),
and ``LSAF_TRACE_PLUGINS=1`` prints every hook call.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any

import pluggy

from lsa_framework import hookspecs
from lsa_framework.errors import UnknownPluginError
from lsa_framework.types import contract_problems

DEFAULT_PLUGINS: tuple[str, ...] = (
    "lsa_framework.engine.statistics",
    "lsa_framework.model.architectures",
    "lsa_framework.data.builtin",
    "lsa_framework.data.files",
    "lsa_framework.data.hub",
    "lsa_framework.scorers.uniform",
    "lsa_framework.scorers.lse",
    "lsa_framework.scorers.owl",
    "lsa_framework.scorers.dlp",
    "lsa_framework.scorers.usage",
    "lsa_framework.scorers.rd",
    "lsa_framework.scorers.evo",
    "lsa_framework.allocators.granularity",
    "lsa_framework.allocators.expert",
    "lsa_framework.pruners.magnitude",
    "lsa_framework.pruners.wanda",
    "lsa_framework.pruners.sparsegpt",
    "lsa_framework.evaluators.perplexity",
    "lsa_framework.evaluators.sparsity",
    "lsa_framework.evaluators.zeroshot",
    "lsa_framework.exporters.safetensors",
    "lsa_framework.exporters.masks",
    "lsa_framework.recovery.plugins",
)

#: kind -> the registration hook that fills it
KINDS: dict[str, str] = {
    "scorers": "lsaf_register_scorers",
    "allocators": "lsaf_register_allocators",
    "pruners": "lsaf_register_pruners",
    "evaluators": "lsaf_register_evaluators",
    "datasets": "lsaf_register_datasets",
    "architectures": "lsaf_register_architectures",
    "exporters": "lsaf_register_exporters",
    "statistics": "lsaf_register_statistics",
    "recoverers": "lsaf_register_recoverers",
}

BUILTIN_DISTRIBUTION = "lsa-framework"


class PluginLoadWarning(UserWarning):
    """A third-party plugin could not be loaded; the others still work."""


@dataclass(frozen=True)
class Registered:
    """A plugin class and where it came from."""

    kind: str
    name: str
    cls: Any
    distribution: str
    version: str


def _builtin_version() -> str:
    from lsa_framework import __version__

    return __version__


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    wanted_env = os.environ.get("LSAF_LOAD_PLUGINS")
    wanted = None if wanted_env is None else {n.strip() for n in wanted_env.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if wanted is not None and dist not in wanted:
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken third-party package must not break the others
            warnings.warn(
                f"Plugin {ep.name!r} from package {dist!r} failed to load ({type(exc).__name__}: {exc}); "
                "it is skipped.",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        pm._lsaf_dists[ep.name] = (dist, ep.dist.version if ep.dist is not None else "?")  # type: ignore[attr-defined]


def new_plugin_manager(entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, and the entry points unless told not to (tests)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm._lsaf_dists = {}  # type: ignore[attr-defined]
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        _load_entry_points(pm)
    if os.environ.get("LSAF_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


@cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and entry points loaded once."""
    return new_plugin_manager()


def _distribution_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str]:
    name = pm.get_name(plugin) or ""
    dists: dict[str, tuple[str, str]] = pm._lsaf_dists  # type: ignore[attr-defined]
    if name in dists:
        return dists[name]
    if name in DEFAULT_PLUGINS:
        return BUILTIN_DISTRIBUTION, _builtin_version()
    module = getattr(plugin, "__module__", None) or getattr(plugin, "__name__", "")
    return (str(module).split(".")[0] or "unknown"), "local"


def collect(kind: str, pm: pluggy.PluginManager | None = None) -> dict[str, Registered]:
    """Every plugin of one kind, by name. Built-ins win name clashes; clashes warn."""
    pm = pm or plugin_manager()
    hook = getattr(pm.hook, KINDS[kind])
    found: dict[str, Registered] = {}
    # get_hookimpls() is in registration order, so built-ins come first and win clashes.
    for impl in hook.get_hookimpls():
        dist, version = _distribution_of(pm, impl.plugin)

        def register(cls: Any, *, _dist: str = dist, _version: str = version) -> None:
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                warnings.warn(
                    f"A {kind[:-1]} from package {_dist!r} has no name; it is skipped.",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                return
            problems = contract_problems(kind, cls)
            if problems:
                warnings.warn(
                    f"The {kind[:-1]} {name!r} from package {_dist!r} does not fulfil the {kind[:-1]} contract "
                    f"({'; '.join(problems)}); it is skipped.",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                return
            if name in found:
                warnings.warn(
                    f"Package {_dist!r} registers a {kind[:-1]} named {name!r}, which "
                    f"{found[name].distribution!r} already registered; the first one is kept.",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                return
            found[name] = Registered(kind, name, cls, _dist, _version)

        try:
            impl.function(register)
        except Exception as exc:
            warnings.warn(
                f"Plugin {impl.plugin_name!r} from package {dist!r} failed while registering {kind} "
                f"({type(exc).__name__}: {exc}); it is skipped.",
                PluginLoadWarning,
                stacklevel=2,
            )
    return found


def lookup(kind: str, name: str, pm: pluggy.PluginManager | None = None) -> Registered:
    """The plugin of ``kind`` called ``name``, or an error with a did-you-mean and the list."""
    plugins = collect(kind, pm)
    if name in plugins:
        return plugins[name]
    known = sorted(plugins)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownPluginError(
        f"Unknown {kind[:-1]} {name!r}.{hint} Known {kind}: {', '.join(known) or 'none'} (see `lsaf list {kind}`)."
    )

"""The ``lsaf run`` / ``lsaf eval`` flags, generated from ``RunConfig``'s fields: one place to add a setting.

Each field becomes ``--field-name`` with its description as help; a field naming a plugin lists the
plugins actually installed; ``*_opts`` fields become repeatable ``--KIND-opt KEY=VALUE`` (``--eval-opt``
and ``--export-opt`` take ``NAME.KEY=VALUE``); list fields take comma-separated text; boolean fields
are switches. Every flag defaults to None, i.e. "not given", so a config file's value stands unless
the flag is given. Evaluators may declare ``shortcuts`` (flag → one of their options), e.g. the
zero-shot evaluator's ``--tasks``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from lsa_framework.errors import BadInputError

#: RunConfig fields whose value is a plugin name (or names): their help lists the installed ones.
PLUGIN_FIELDS = {
    "scorer": "scorers",
    "allocator": "allocators",
    "pruner": "pruners",
    "calibration": "datasets",
    "eval": "evaluators",
    "export": "exporters",
    "recover": "recoverers",
}
#: ``*_opts`` fields whose keys are NAME.KEY (options of several plugins at once).
NAMED_OPTS = {"eval_opts": "eval", "export_opts": "export"}
#: Flags that are switches only (no ``--no-...`` form): asking for them is an act, not a setting.
SWITCHES = frozenset({"overwrite", "resume"})


def _installed(kind: str) -> str:
    from lsa_framework import registry

    names = sorted(registry.collect(kind))
    return ", ".join(names) if names else "none installed"


def _help(name: str, field: Any) -> str:
    text = (field.description or name.replace("_", " ")).rstrip(".")
    if name in PLUGIN_FIELDS:
        text += f" (installed: {_installed(PLUGIN_FIELDS[name])})"
    default = field.get_default(call_default_factory=True)
    if default not in (None, {}, [], False) and name not in SWITCHES:
        shown = ",".join(default) if isinstance(default, list) else default
        text += f" [default: {shown}]"
    return text + "."


def _parameter(name: str, field: Any) -> inspect.Parameter:
    annotation = field.annotation
    origin = typing.get_origin(annotation)
    flag = "--" + name.replace("_", "-")
    help_text = _help(name, field)
    kind: Any
    if name.endswith("_opts"):
        flag = "--" + name.removesuffix("_opts").replace("_", "-") + "-opt"
        example = f"{NAMED_OPTS[name]}-name.KEY=VALUE" if name in NAMED_OPTS else "KEY=VALUE"
        option = typer.Option(flag, help=f"Option of the {name.removesuffix('_opts')} plugin, {example} (repeatable).")
        return _keyword(name, Annotated[list[str] | None, option])
    if annotation is bool:
        switch = flag if name in SWITCHES else f"{flag}/--no-{flag[2:]}"
        return _keyword(name, Annotated[bool | None, typer.Option(switch, help=help_text)])
    if origin is list:
        kind = str  # comma-separated, as in a config file
    elif annotation in (int, float, str, Path) or (
        typing.get_args(annotation)
        and all(a in (int, float, str, Path, type(None)) for a in typing.get_args(annotation))
    ):
        args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        kind = args[0]
    else:
        kind = str  # Literal and the like: validated by the config model, with its message
    return _keyword(name, Annotated[kind | None, typer.Option(flag, help=help_text)])


def _keyword(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def config_parameters(fields: Iterable[str]) -> list[inspect.Parameter]:
    """One option per RunConfig field in ``fields``, in RunConfig's order."""
    from lsa_framework.config import RunConfig

    wanted = set(fields)
    return [_parameter(name, field) for name, field in RunConfig.model_fields.items() if name in wanted]


def shortcut_parameters() -> list[inspect.Parameter]:
    """The flags evaluators declare for one of their options (``shortcuts = {"tasks": "tasks"}``)."""
    from lsa_framework import registry

    found: dict[str, inspect.Parameter] = {}
    for name, entry in registry.collect("evaluators").items():
        for flag, option in dict(getattr(entry.cls, "shortcuts", {})).items():
            description = entry.cls.Options.model_fields[option].description or option
            option_help = f"Sets --eval-opt {name}.{option} and adds {name} to --eval: {description}"
            annotation = Annotated[str | None, typer.Option("--" + flag.replace("_", "-"), help=option_help)]
            found.setdefault(flag, _keyword(flag, annotation))
    return list(found.values())


def values_from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The RunConfig values of the flags the user gave (None means not given)."""
    from lsa_framework.config import RunConfig, parse_key_values

    values: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None or name not in RunConfig.model_fields:
            continue
        if name.endswith("_opts"):
            flag = "--" + name.removesuffix("_opts").replace("_", "-") + "-opt"
            parsed = parse_key_values(value, flag)
            values[name] = _split_named(parsed, flag, NAMED_OPTS[name]) if name in NAMED_OPTS else parsed
        else:
            values[name] = value
    _apply_shortcuts(flags, values)
    return values


def _split_named(parsed: dict[str, Any], flag: str, field: str) -> dict[str, dict[str, Any]]:
    named: dict[str, dict[str, Any]] = {}
    for key, value in parsed.items():
        plugin, dot, option = key.partition(".")
        if not dot:
            raise BadInputError(f"{flag} {key}=... needs the plugin's name: write it like {flag} NAME.{key}=...")
        named.setdefault(plugin, {})[option] = value
    return named


def _apply_shortcuts(flags: dict[str, Any], values: dict[str, Any]) -> None:
    from lsa_framework import registry
    from lsa_framework.config import RunConfig

    for name, entry in registry.collect("evaluators").items():
        for flag, option in dict(getattr(entry.cls, "shortcuts", {})).items():
            if flags.get(flag) is None:
                continue
            values.setdefault("eval_opts", {}).setdefault(name, {})[option] = flags[flag]
            current = values.get("eval") or RunConfig.model_fields["eval"].get_default(call_default_factory=True)
            if isinstance(current, str):
                current = [part.strip() for part in current.split(",") if part.strip()]
            if name not in current:
                values["eval"] = [*current, name]

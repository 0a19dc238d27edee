"""mkdocs hooks: render the command-line and configuration references from the code at build time.

    mkdocs build --strict        # (make docs) runs these hooks; nothing generated is committed

A page holds a marker comment, ``<!-- lsaf:cli -->`` or ``<!-- lsaf:config -->``, that is replaced by
Markdown rendered from the typer app (the same text ``lsaf COMMAND --help`` prints) or from
``RunConfig.model_fields`` and the ``Options`` model of every built-in plugin. Only built-in plugins
are documented (``LSAF_LOAD_PLUGINS=""``), so the pages do not depend on what else is installed.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import typing
from functools import cache
from typing import Any

# Built-in plugins only: the pages must not depend on what else is installed on the machine.
os.environ["LSAF_LOAD_PLUGINS"] = ""

MARKERS = {
    "<!-- lsaf:cli -->": "render_cli",
    "<!-- lsaf:config -->": "render_config",
}


# --- command line -------------------------------------------------------------------------------


def _plain_command(command: Any) -> Any:
    """Turn off rich formatting so ``get_help`` returns click's plain text instead of printing."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        _plain_command(sub)
    return command


def _help_text(command: Any, name: str, parent: Any = None) -> str:
    import click

    ctx = click.Context(command, info_name=name, parent=parent, terminal_width=100, max_content_width=100)
    return command.get_help(ctx)


@cache
def render_cli() -> str:
    import click
    import typer

    from lsa_framework.cli import app

    root = _plain_command(typer.main.get_command(app))
    root_ctx = click.Context(root, info_name="lsaf")
    commands = dict(getattr(root, "commands", {}))
    lines = ["| command | what it does |", "| --- | --- |"]
    lines += [f"| [`lsaf {name}`](#lsaf-{name}) | {cmd.get_short_help_str(100)} |" for name, cmd in commands.items()]
    lines += ["", "## `lsaf`", "", "```text", _help_text(root, "lsaf").rstrip(), "```", ""]
    for name, cmd in commands.items():
        lines += [f"## `lsaf {name}` {{#lsaf-{name}}}", "", "```text", _help_text(cmd, name, root_ctx).rstrip()]
        lines += ["```", ""]
    return "\n".join(lines)


# --- configuration ------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    text = str(annotation)
    for prefix in ("typing.", "collections.abc.", "pathlib.", "lsa_framework.types."):
        text = text.replace(prefix, "")
    return text.replace("NoneType", "None")


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return f"`{value!r}`"


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _constraints(field: Any) -> str:
    parts = []
    for item in field.metadata:
        for attr, symbol in _BOUNDS.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _code_cell(text: str) -> str:
    """A code span in a table cell: Python-Markdown keeps pipes inside backticks in one cell."""
    return f"`{text}`"


def _cli_flags() -> dict[str, tuple[str, str]]:
    """RunConfig field → the ``lsaf run`` flag that sets it and its help (``scorer_opts`` → ``--scorer-opt``)."""
    import typer

    from lsa_framework.cli import app
    from lsa_framework.config import RunConfig

    run = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    params = {p.name: p for p in run.params if getattr(p, "opts", None)}
    result = {}
    for name in RunConfig.model_fields:
        param = params.get(name) or params.get(name.removesuffix("s"))
        result[name] = (param.opts[0], getattr(param, "help", "") or "") if param is not None else ("", "")
    return result


def _options_table(options: Any) -> list[str]:
    fields = options.model_fields
    if not fields:
        return ["No options."]
    lines = ["| option | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
    for name, field in fields.items():
        lines.append(
            f"| `{name}` | {_code_cell(_type_name(field.annotation))} | {_cell(_default(field))} | "
            f"{_cell(_constraints(field))} | {_cell(field.description)} |"
        )
    return lines


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


@cache
def render_config() -> str:
    from lsa_framework import registry
    from lsa_framework.config import RunConfig

    flags = _cli_flags()
    lines = ["## `RunConfig`", "", _summary(RunConfig), ""]
    lines += ["| field | type | default | allowed | flag | description |", "| --- | --- | --- | --- | --- | --- |"]
    for name, field in RunConfig.model_fields.items():
        flag, flag_help = flags[name]
        lines.append(
            f"| `{name}` | {_code_cell(_type_name(field.annotation))} | {_cell(_default(field))} | "
            f"{_cell(_constraints(field))} | {f'`{flag}`' if flag else ''} | {_cell(field.description or flag_help)} |"
        )
    for kind in registry.KINDS:
        plugins = registry.collect(kind)
        lines += ["", f"## {kind.capitalize()}", ""]
        for name, entry in plugins.items():
            cls = entry.cls
            lines += [f"### `{name}` {{#{kind}-{name}}}", ""]
            # The class's own docstring, else its module's (a module may hold several plugins).
            summary = _summary(cls) if cls.__dict__.get("__doc__") else _summary(sys.modules.get(cls.__module__))
            if summary:
                lines += [summary, ""]
            needs = getattr(cls, "needs", None)
            if needs is not None:
                needed = ", ".join(f"`{n}`" for n in sorted(needs)) or "none"
                lines += [f"Statistics needed: {needed}. Module `{cls.__module__}`.", ""]
            else:
                lines += [f"Module `{cls.__module__}`.", ""]
            options = getattr(cls, "Options", None)
            if options is not None:
                lines += [*_options_table(options), ""]
    return "\n".join(lines)


# --- mkdocs events ------------------------------------------------------------------------------


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker, renderer in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, globals()[renderer]())
    return markdown


_ROLE = re.compile(r":(?:func|class|data|mod|meth|attr|exc|obj):(?=<code>|`)")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Drop Sphinx roles (``:class:`X```) that docstrings use; mkdocstrings shows them verbatim."""
    return _ROLE.sub("", html)

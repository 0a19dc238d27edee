"""The command line is generated from RunConfig and the installed plugins, not written by hand."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from lsa_framework import registry
from lsa_framework.cli import RUN_FIELDS, app
from lsa_framework.cli_options import values_from_flags
from lsa_framework.config import RunConfig

runner = CliRunner()


def help_text(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_every_run_setting_has_a_flag():
    assert set(RUN_FIELDS) == set(RunConfig.model_fields)
    text = help_text("run")
    for name in RunConfig.model_fields:
        flag = "--" + (name.removesuffix("_opts") + "-opt" if name.endswith("_opts") else name).replace("_", "-")
        assert flag in text, flag


def test_plugin_flags_list_what_is_installed():
    text = help_text("run")
    for kind in ("scorers", "allocators", "pruners"):
        for name in registry.collect(kind):
            assert name in text, (kind, name)


def test_list_shows_options_with_types_and_defaults():
    result = runner.invoke(app, ["list", "pruners", "sparsegpt"], terminal_width=200)
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "blocksize" in text and "128" in text and "percdamp" in text
    everything = runner.invoke(app, ["list", "--options"], terminal_width=200)
    assert everything.exit_code == 0 and "group_size" in everything.output and "lamda" in everything.output
    unknown = runner.invoke(app, ["list", "pruners", "wandaa"])
    assert unknown.exit_code == 2 and "Did you mean 'wanda'" in " ".join(unknown.output.split())


def test_evaluator_shortcut_sets_its_option_and_adds_it():
    values = values_from_flags({"tasks": "paper", "eval": "perplexity"})
    assert values["eval_opts"] == {"zeroshot": {"tasks": "paper"}}
    assert values["eval"] == ["perplexity", "zeroshot"]


def test_importing_the_package_does_not_import_torch():
    code = "import sys, lsa_framework; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]

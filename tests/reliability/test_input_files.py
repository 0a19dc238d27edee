"""Files the user hands lsaf — configs, grids, text, weights — fail with one sentence, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lsa_framework.config import build_config, load_config_file
from lsa_framework.errors import BadInputError
from tests.fakes import cli, one_sentence, quick_run_args

runner = CliRunner()


def test_jsonl_with_a_lone_surrogate(tiny_model_dir, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "fine text here"}\n{"text": "broken \\ud800 text"}\n')
    result = cli(*quick_run_args(tiny_model_dir, docs, tmp_path / "out"))
    assert (
        result.exit_code == 2 and "Line 2" in one_sentence(result.output) and "surrogate" in one_sentence(result.output)
    )


def test_config_that_is_not_utf8(tiny_model_dir, tiny_text_file, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes("sparsity: 0.5\nmodel: caf\xe9\n".encode("latin-1"))
    result = cli(*quick_run_args(tiny_model_dir, tiny_text_file, tmp_path / "out"), "--config", str(config))
    assert result.exit_code == 2 and "not UTF-8" in one_sentence(result.output)


@pytest.mark.parametrize(
    ("name", "content"),
    [("run.yaml", "nsamples: 4\nnsamples: 8\n"), ("run.json", '{"nsamples": 4, "nsamples": 8}')],
)
def test_duplicate_keys_are_errors(name, content, tmp_path):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(BadInputError, match="'nsamples' is given twice"):
        load_config_file(path)


def test_upper_case_toml_suffix_is_toml(tmp_path):
    path = tmp_path / "RUN.TOML"
    path.write_text('nsamples = 4\neval = "perplexity,sparsity"\n')
    values = load_config_file(path)
    assert values == {"nsamples": 4, "eval": "perplexity,sparsity"}
    assert build_config(values).eval == ["perplexity", "sparsity"]  # the CLI's comma form works in files too


def test_booleans_are_not_numbers():
    with pytest.raises(BadInputError, match="nsamples"):
        build_config({"nsamples": True})
    with pytest.raises(BadInputError, match="seqlen"):
        build_config({"seqlen": False})


def test_output_in_a_config_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "run.yaml"
    path.write_text("output: ~/runs/x\n")
    assert build_config(load_config_file(path)).output == tmp_path / "runs" / "x"


def test_max_tokens_below_one_window_is_refused_before_pruning(tiny_run_values, monkeypatch):
    from lsa_framework.engine import pipeline
    from lsa_framework.engine import session as session_module

    monkeypatch.setattr(
        session_module, "load_model", lambda *a, **k: pytest.fail("loaded before the options were checked")
    )
    config = build_config({**tiny_run_values, "eval_opts": {"perplexity": {"seqlen": 64, "max_tokens": 50}}})
    with pytest.raises(BadInputError, match="less than one window of 64 tokens"):
        pipeline.run(config)


def test_offload_with_a_missing_shard(tiny_model_dir, tiny_text_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(sharded, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(sharded)
    shard = sorted(sharded.glob("*.safetensors"))[1]
    shard.unlink()
    result = cli(*quick_run_args(sharded, tiny_text_file, tmp_path / "out"), "--offload", "disk")
    assert result.exit_code == 2 and shard.name in one_sentence(result.output)


# A run that sends itself a signal while its output folder is being written (after model/ is saved).
SIGNALLER = """
import os, signal, sys
from lsa_framework.report import output
SIGNAL = getattr(signal, sys.argv[1])
if SIGNAL == signal.SIGINT:  # a shell starts background jobs with SIGINT ignored; a terminal's Ctrl-C is not
    signal.signal(signal.SIGINT, signal.default_int_handler)
def render(result):
    os.kill(os.getpid(), SIGNAL)
    return ""
output.render_markdown = render
from lsa_framework.cli import main
sys.argv = ["lsaf", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_while_saving_leaves_no_temporary_and_says_so(name, code, tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "LSAF_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1"}
    args = quick_run_args(tiny_model_dir, tiny_text_file, out)
    done = subprocess.run([sys.executable, "-c", SIGNALLER, name, *args], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == code, done.stderr
    assert "interrupted" in done.stderr and "--resume" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".out.partial"]  # no temporary folder; the state to resume
    resumed = subprocess.run([sys.executable, "-m", "lsa_framework", *args, "--resume"], env=env, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_error_sentence_with_brackets_is_printed_as_written(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("")
    result = cli("bench", "--config", str(grid), "--output", str(tmp_path / "bench"), "--quiet")
    assert result.exit_code == 2 and "`scorers: [uniform, lse]`" in one_sentence(result.output)  # not eaten as markup

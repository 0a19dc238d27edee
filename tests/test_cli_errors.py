"""Bad input on the command line: exit code 2, one sentence, no output folder left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lsa_framework.cli import app
from tests.fakes import quick_run_args

runner = CliRunner()


def lsaf(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def base(tiny_model_dir: Path, tiny_text_file: Path, tmp_path: Path) -> list[str]:
    return quick_run_args(tiny_model_dir, tiny_text_file, tmp_path / "out")


CASES = {
    "unknown pruner": (["--pruner", "wandaa"], "Did you mean 'wanda'"),
    "unknown scorer": (["--scorer", "lsee"], "Unknown scorer"),
    "sparsity above range": (["--sparsity", "1.0"], "sparsity"),
    "sparsity negative": (["--sparsity", "-0.1"], "sparsity"),
    "impossible N:M": (["--pattern", "3:2"], "impossible"),
    "malformed N:M": (["--pattern", "2-4"], "N:M"),
    "N:M conflicting sparsity": (["--pattern", "2:4", "--sparsity", "0.7"], "conflicts"),
    "nsamples zero": (["--nsamples", "0"], "nsamples"),
    "missing model path": (["--model", "./no/such/model"], "does not exist"),
    "missing calibration file": (["--calibration", "./no/such.txt"], "does not exist"),
    "unknown device": (["--device", "tpu"], "device"),
    "unknown pipeline": (["--pipeline", "parallel"], "'sequential' or 'basic'"),
    "unknown offload": (["--offload", "ram"], "'none' or 'disk'"),
    "offload of a missing model": (["--offload", "disk", "--model", "./no/such.gguf"], "does not exist"),
    "unknown plugin option": (["--pruner", "sparsegpt", "--pruner-opt", "blocksz=64"], "blocksz"),
    "bad plugin option value": (["--pruner", "sparsegpt", "--pruner-opt", "percdamp=-1"], "percdamp"),
}


if not torch.cuda.is_available():
    CASES["cuda without a GPU"] = (["--device", "cuda"], "no CUDA device")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_sentence(case: str, base: list[str], tmp_path: Path):
    extra, needle = CASES[case]
    result = lsaf(*base, *extra)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert needle.lower() in text.lower()
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_output_path_that_is_a_file(base: list[str], tmp_path: Path):
    target = tmp_path / "out"
    target.write_text("keep me")
    result = lsaf(*base)
    assert result.exit_code == 2
    assert "is a file" in result.output
    assert target.read_text() == "keep me"


def test_unsupported_architecture(tmp_path: Path, tiny_text_file: Path):
    from transformers import MambaConfig, MambaForCausalLM

    from tests.conftest import make_tokenizer

    model_dir = tmp_path / "mamba"
    MambaForCausalLM(MambaConfig(vocab_size=200, hidden_size=16, num_hidden_layers=1, state_size=4)).save_pretrained(
        model_dir
    )
    make_tokenizer().save_pretrained(model_dir)
    result = lsaf(
        "run",
        "--model",
        str(model_dir),
        "--calibration",
        str(tiny_text_file),
        "--nsamples",
        "2",
        "--seqlen",
        "16",
        "--scorer",
        "uniform",
        "--quiet",
    )
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "MambaForCausalLM is a state-space model" in text and "nearest supported family" in text


@pytest.mark.parametrize(
    ("text", "needle"), [("", "empty"), ("w1 w2 w3 w4 w5 w6 w7 w8 w9\n\nw1 w2 w3\n", "fewer than --seqlen")]
)
def test_empty_or_too_short_calibration_file(base: list[str], tmp_path: Path, text: str, needle: str):
    short = tmp_path / "short.txt"
    short.write_text(text)
    args = base.copy()
    args[args.index("--calibration") + 1] = str(short)
    result = lsaf(*args)
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()

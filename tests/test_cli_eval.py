"""lsaf eval: a saved model evaluated as it is, against a direct perplexity computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from lsa_framework.cli import app
from lsa_framework.data.files import split_text
from tests.conftest import make_tokenizer


def test_eval_perplexity_matches_direct_computation(tiny_model_dir: Path, tiny_text_file: Path):
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(tiny_model_dir),
            "--calibration",
            str(tiny_text_file),
            "--seqlen",
            "64",
            "--eval",
            "perplexity,sparsity",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)

    # Independent: the evaluation part is the last 10% of the file; NLL over non-overlapping windows.
    text = tiny_text_file.read_text()
    evaluation = split_text(text, 0.1)[1]
    ids = torch.tensor(make_tokenizer()(evaluation, add_special_tokens=False)["input_ids"])
    windows = ids[: ids.numel() // 64 * 64].view(-1, 64)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=windows).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert metrics["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-4)
    assert metrics["sparsity"] < 0.01  # a dense model

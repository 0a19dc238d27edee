"""End to end on the real default model (SmolLM2-135M from the shipped GGUF) through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lsa_framework.cli import app
from lsa_framework.data.builtin import AustenDataset
from lsa_framework.data.windows import evaluation_ids
from lsa_framework.evaluators.perplexity import perplexity
from lsa_framework.model.loading import load_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = [
    "--nsamples",
    "8",
    "--seqlen",
    "256",
    "--eval",
    "perplexity,sparsity",
    "--eval-opt",
    "perplexity.max_tokens=4096",
    "--quiet",
]


@pytest.fixture(scope="module")
def dense_perplexity() -> float:
    loaded = load_model("smollm2-135m")
    ids = evaluation_ids(loaded.tokenizer, AustenDataset().documents("evaluation"), 4096)
    return perplexity(loaded.model, ids, 256, 4)


def test_default_lsa_run_writes_a_loadable_pruned_model(tmp_path: Path, dense_perplexity: float):
    out = tmp_path / "lsa"
    result = CliRunner().invoke(app, ["run", "--sparsity", "0.5", *SMALL, "--output", str(out)])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["scorer"] == "lse" and run["config"]["pruner"] == "wanda"
    units = run["units"]
    assert len(units) == 30
    sizes = [u["numel"] for u in units]
    allocated = sum(u["sparsity"] * n for u, n in zip(units, sizes, strict=True)) / sum(sizes)
    assert allocated == pytest.approx(0.5, abs=1e-4)
    assert max(u["sparsity"] for u in units) > min(u["sparsity"] for u in units)  # LSA is non-uniform

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    weights = [model.get_submodule(name).weight for name in run["mask_sha256"]]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(run["metrics"]["sparsity"], abs=1e-12)
    assert zeros == pytest.approx(0.5, abs=2e-3)  # per-row rounding of int(in · s)
    # Pruning half the weights hurts, but a working Wanda keeps the model far from random (49k vocab).
    assert dense_perplexity < run["metrics"]["perplexity"] < 10 * dense_perplexity


def test_sparsegpt_2_4_on_default_model(tmp_path: Path, dense_perplexity: float):
    out = tmp_path / "sgpt"
    args = ["run", "--scorer", "uniform", "--pruner", "sparsegpt", "--pattern", "2:4", *SMALL, "--output", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    for name in run["mask_sha256"]:
        weight = model.get_submodule(name).weight
        zeros_per_group = (weight == 0).reshape(weight.shape[0], -1, 4).sum(-1)
        # Exactly 2 of every 4 pruned; a group may hold a 3rd zero the dequantised model already had.
        assert int(zeros_per_group.min()) >= 2, name
        assert float((zeros_per_group == 2).float().mean()) > 0.99, name
    assert dense_perplexity < run["metrics"]["perplexity"] < 20 * dense_perplexity


def test_list_shows_builtins_with_their_package():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("lse", "owl", "dlp", "uniform", "wanda", "sparsegpt", "magnitude", "layer", "block", "projection"):
        assert name in result.stdout
    assert "lsa-framework" in result.stdout

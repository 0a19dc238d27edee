"""``lsaf recover`` and ``lsaf run --recover``: the masks of the pruned output survive, exactly.

Every test compares the saved weights with the pruned ones: W_after == 0 exactly where W_before == 0,
the mask hash of every linear is unchanged, the output reloads with ``from_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lsa_framework.engine.masks import mask_hash
from lsa_framework.engine.observer import Observer
from tests.fakes import cli

runner = CliRunner()


@pytest.fixture(scope="module")
def pruned(tiny_model_dir: Path, tiny_text_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "out"
    result = cli("run", "--model", str(tiny_model_dir), "--calibration", str(tiny_text_file), "--nsamples", "8",
                 "--seqlen", "32", "--scorer", "uniform", "--pruner", "wanda", "--sparsity", "0.6",
                 "--eval", "perplexity", "--eval-opt", "perplexity.seqlen=32", "--output", str(out),
                 "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _linears(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(folder / "model" / "model.safetensors"))
    return {k: v for k, v in weights.items() if ".layers." in k and k.endswith("proj.weight")}


def _check_masks_kept(before: Path, after: Path) -> None:
    old, new = _linears(before), _linears(after)
    assert old.keys() == new.keys() and old
    for name, weight in old.items():
        assert torch.equal(new[name] == 0, weight == 0), name  # the same zeros, exactly
        assert mask_hash(new[name] == 0) == mask_hash(weight == 0)
    assert any(not torch.equal(new[n], old[n]) for n in old)  # the kept weights did learn


@pytest.mark.parametrize("method", ["masked", "lora"])
def test_recover_keeps_every_zero(method, pruned, tmp_path):
    out = tmp_path / "recovered"
    result = cli("recover", str(pruned), "--method", method, "--steps", "3", "--recover-opt", "batch_size=2",
                 "--output", str(out), "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    _check_masks_kept(pruned, out)
    run_json = json.loads((out / "run.json").read_text())
    recovery = run_json["extra"]["recovery"]
    assert run_json["kind"] == "recover" and recovery["method"] == method and recovery["masks_unchanged"]
    assert recovery["masks_differing_from_source"] == [] and len(recovery["losses"]) == 3
    assert run_json["calibration"]["nsamples"] == 8  # the pruned run's calibration split, drawn again
    assert (out / "loss_curve.png").stat().st_size > 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.randint(0, 190, (1, 8))).logits).all()


def test_unmerged_lora_writes_the_adapter_and_the_pruned_base(pruned, tmp_path):
    out = tmp_path / "adapter-run"
    result = cli("recover", str(pruned), "--method", "lora", "--steps", "2", "--recover-opt", "merge=false",
                 "--output", str(out), "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "adapter" / "masks.safetensors").is_file()
    old, base = _linears(pruned), _linears(out)
    assert all(torch.equal(base[n], old[n]) for n in old)  # model/ is the pruned model itself


def test_run_with_recover_is_one_command(tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    result = cli("run", "--model", str(tiny_model_dir), "--calibration", str(tiny_text_file), "--nsamples", "8",
                 "--seqlen", "32", "--scorer", "uniform", "--pruner", "wanda", "--sparsity", "0.6",
                 "--eval", "sparsity", "--recover", "masked", "--recover-opt", "steps=2",
                 "--output", str(out), "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    run_json = json.loads((out / "run.json").read_text())
    recovery = run_json["extra"]["recovery"]
    assert recovery["masks_unchanged"] and recovery["metrics_before"]["sparsity"] == run_json["metrics"]["sparsity"]
    for name, weight in _linears(out).items():  # the pruner's masks, after recovery
        assert mask_hash(weight == 0) == run_json["mask_sha256"][name.removesuffix(".weight")]


class _StopAt(Observer):
    """Interrupts the recovery after ``step`` optimizer steps (as a kill would)."""

    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    def start_pass(self, name: str, total: int) -> None:
        self.recovering = name == "recovery"

    def advance(self) -> None:
        if getattr(self, "recovering", False):
            self.seen += 1
            if self.seen == self.step:
                raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["masked", "lora"])
def test_resume_after_an_interruption_gives_the_uninterrupted_weights(method, pruned, tmp_path):
    from lsa_framework.engine.recover import recover_output

    options = {"steps": 4, "batch_size": 2, "checkpoint_every": 2}
    whole = recover_output(pruned, {"recover": method, "recover_opts": options, "output": tmp_path / "whole",
                                    "eval": []})  # fmt: skip
    assert whole.extra["recovery"]["resumed_from"] == 0
    with pytest.raises(KeyboardInterrupt):  # killed after step 3: the step-2 checkpoint is on disk
        recover_output(pruned, {"recover": method, "recover_opts": options, "output": tmp_path / "resumed",
                                "eval": []}, _StopAt(3))  # fmt: skip
    assert not (tmp_path / "resumed").exists()
    resumed = recover_output(pruned, {"recover": method, "recover_opts": options, "output": tmp_path / "resumed",
                                      "eval": [], "resume": True})  # fmt: skip
    assert resumed.extra["recovery"]["resumed_from"] == 2
    a, b = _linears(tmp_path / "whole"), _linears(tmp_path / "resumed")
    assert all(torch.equal(a[n], b[n]) for n in a)
    _check_masks_kept(pruned, tmp_path / "resumed")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no state left behind

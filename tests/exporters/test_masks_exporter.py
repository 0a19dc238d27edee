"""The masks export and ``lsaf apply``: bit-packed masks rebuild the pruned model exactly, and only it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from lsa_framework.exporters.masks import MASKS_FILE, read_masks
from tests.fakes import cli

runner = CliRunner()


def _run(model: Path, text: Path, out: Path, pruner: str = "wanda") -> None:
    result = cli("run", "--model", str(model), "--calibration", str(text), "--nsamples", "8", "--seqlen", "64",
                 "--scorer", "lse", "--pruner", pruner, "--sparsity", "0.7", "--eval", "sparsity",
                 "--export", "safetensors,masks", "--output", str(out), "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for f in folder.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


def test_masks_rebuild_the_pruned_model_bit_for_bit(tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    _run(tiny_model_dir, tiny_text_file, out)
    metadata, masks = read_masks(out / "masks")
    pruned = load_file(str(out / "model" / "model.safetensors"))
    dense = load_file(str(tiny_model_dir / "model.safetensors"))
    assert len(masks) == 21 and metadata["pruner"] == "wanda"
    packed_bytes = (out / "masks" / MASKS_FILE).stat().st_size
    assert packed_bytes < sum(m.numel() for m in masks.values()) / 8 + 20_000  # one bit per weight, plus a header
    for name, mask in masks.items():
        key = f"{name}.weight"
        assert torch.equal(pruned[key] == 0, mask | (dense[key] == 0))  # the mask is what the pruner zeroed
    assert (
        json.loads((out / "masks" / "run.json").read_text())["mask_sha256"]
        == json.loads((out / "run.json").read_text())["mask_sha256"]
    )

    rebuilt = tmp_path / "rebuilt"
    applied = cli("apply", str(out / "masks"), "--model", str(tiny_model_dir), "--output", str(rebuilt))
    assert applied.exit_code == 0, applied.output
    again = load_file(str(rebuilt / "model" / "model.safetensors"))
    assert again.keys() == pruned.keys()
    assert all(torch.equal(again[k], pruned[k]) for k in pruned)


def test_apply_refuses_other_base_weights(tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    _run(tiny_model_dir, tiny_text_file, out)
    other = _copy(tiny_model_dir, tmp_path / "other")
    weights = load_file(str(other / "model.safetensors"))
    save_file({k: v * 1.5 for k, v in weights.items()}, str(other / "model.safetensors"), metadata={"format": "pt"})
    result = cli("apply", str(out / "masks"), "--model", str(other), "--output", str(tmp_path / "rebuilt"))
    assert result.exit_code == 2 and "content hash" in " ".join(result.output.split())
    assert not (tmp_path / "rebuilt").exists()


def test_apply_refuses_masks_of_a_pruner_that_updates_weights(tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    _run(tiny_model_dir, tiny_text_file, out, pruner="sparsegpt")
    result = cli("apply", str(out / "masks"), "--model", str(tiny_model_dir), "--output", str(tmp_path / "rebuilt"))
    assert result.exit_code == 2 and "also updates the kept weights" in " ".join(result.output.split())


@pytest.mark.parametrize("where", ["missing", "not masks"])
def test_apply_explains_a_wrong_masks_folder(where, tiny_model_dir, tmp_path):
    folder = tmp_path / "masks"
    if where == "not masks":
        folder.mkdir()
        save_file({"x": torch.zeros(2)}, str(folder / MASKS_FILE))
    result = cli("apply", str(folder), "--model", str(tiny_model_dir), "--output", str(tmp_path / "rebuilt"))
    assert result.exit_code == 2 and "masks" in result.output and "Traceback" not in result.output

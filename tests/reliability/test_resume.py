"""--resume after a SIGKILL mid-pruning gives exactly the masks and weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lsa_framework.engine.checkpoint import partial_dir

# Registers a plugin that SIGKILLs this very process right after layer 1 is pruned, then runs the CLI.
KILLER = """
import os, signal, sys, types
from lsa_framework import hookimpl, registry
plugin = types.ModuleType("killer")
def lsaf_after_layer_pruned(layer_index, masks, report):
    if layer_index == 1:
        os.kill(os.getpid(), signal.SIGKILL)
plugin.lsaf_after_layer_pruned = hookimpl(lsaf_after_layer_pruned)
registry.plugin_manager().register(plugin, name="killer")
from lsa_framework.cli import main
sys.argv = ["lsaf", *sys.argv[1:]]
main()
"""


def lsaf(args: list[str], killer: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LSAF_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", KILLER, *args] if killer else [sys.executable, "-m", "lsa_framework", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model" / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir: Path, tiny_text_file: Path, tmp_path: Path):
    common = [
        "run",
        "--model",
        str(tiny_model_dir),
        "--calibration",
        str(tiny_text_file),
        "--nsamples",
        "8",
        "--seqlen",
        "64",
        "--scorer",
        "lse",
        "--pruner",
        "sparsegpt",
        "--sparsity",
        "0.6",
        "--eval",
        "sparsity",
        "--quiet",
    ]
    reference = tmp_path / "reference"
    assert lsaf([*common, "--output", str(reference)]).returncode == 0

    out = tmp_path / "resumed"
    killed = lsaf([*common, "--output", str(out)], killer=True)
    assert killed.returncode == -9  # SIGKILL, mid-pruning
    assert not out.exists()
    state = json.loads((partial_dir(out) / "state.json").read_text())
    assert state["layers_done"] == 1 and "scores" in state  # layer 0 saved; layer 1 died before its save

    again = lsaf([*common, "--output", str(out)])
    assert again.returncode == 2 and "--resume" in again.stderr  # old state is reported, not reused silently

    resumed = lsaf([*common, "--output", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert not partial_dir(out).exists()
    ref_run, new_run = (json.loads((d / "run.json").read_text()) for d in (reference, out))
    assert new_run["mask_sha256"] == ref_run["mask_sha256"]
    ref_w, new_w = weights(reference), weights(out)
    assert ref_w.keys() == new_w.keys()
    assert all(bool((ref_w[k] == new_w[k]).all()) for k in ref_w)


def test_resume_with_other_settings_is_refused(tiny_run_values, tmp_path: Path):
    from lsa_framework.config import build_config
    from lsa_framework.engine.checkpoint import Checkpoint
    from lsa_framework.errors import BadInputError

    out = tmp_path / "out"
    first = build_config({**tiny_run_values, "output": out, "sparsity": 0.5})
    Checkpoint.open(first).save_scores({"layer.0": 1.0})
    with pytest.raises(BadInputError, match="different settings"):
        Checkpoint.open(build_config({**tiny_run_values, "output": out, "sparsity": 0.6, "resume": True}))
    with pytest.raises(BadInputError, match="needs --output"):
        Checkpoint.open(build_config({**tiny_run_values, "resume": True}))

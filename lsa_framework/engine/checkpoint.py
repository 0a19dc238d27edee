"""Resumable runs: finished stages and pruned layers, kept beside the output until it is written.

    lsaf run ... --output out/lsa-70            # killed at layer 17
    lsaf run ... --output out/lsa-70 --resume   # scores reused, layers 0-16 loaded, pruning goes on at 17

The state lives in ``.<output name>.partial/`` next to the output: ``state.json`` (the config's
fingerprint, the unit scores once scoring is done, the number of pruned layers) and one safetensors
file per pruned layer. Every file is written to a temporary name and renamed, so a SIGKILL at any
instant leaves either the old or the new state. On resume the activations at the first unfinished
layer are recomputed by running the calibration batch through the already-pruned layers, which
gives bit-identical inputs, hence identical masks and weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lsa_framework.errors import BadInputError
from lsa_framework.types import Layout

#: RunConfig fields that do not change what is computed, so a resume may differ in them.
NOT_FINGERPRINTED = frozenset({"output", "overwrite", "resume", "threads", "device", "offload", "eval", "eval_opts"})


def fingerprint(config: Any) -> str:
    data = {k: v for k, v in config.model_dump(mode="json").items() if k not in NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def partial_dir(output: Path) -> Path:
    output = output.resolve()
    return output.parent / f".{output.name}.partial"


def _write_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


class Checkpoint:
    """The on-disk state of one run; a no-op when the run has no output folder."""

    def __init__(self, folder: Path | None, config_fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = config_fingerprint
        self.state: dict[str, Any] = {"fingerprint": config_fingerprint, "layers_done": 0, "mask_sha256": {}}

    @classmethod
    def open(cls, config: Any) -> Checkpoint:
        """Start or resume the checkpoint of ``config``; refuse to silently reuse or drop old state."""
        if config.output is None:
            if config.resume:
                raise BadInputError("--resume needs --output: the resumable state is kept beside the output folder.")
            return cls(None, "")
        folder = partial_dir(config.output)
        checkpoint = cls(folder, fingerprint(config))
        state_file = folder / "state.json"
        if state_file.is_file():
            old = json.loads(state_file.read_text())
            if not config.resume:
                raise BadInputError(
                    f"An interrupted run left its state in {folder} ({old.get('layers_done', 0)} layers pruned); "
                    "pass --resume to continue it, or delete that folder to start over."
                )
            if old.get("fingerprint") != checkpoint.fingerprint:
                raise BadInputError(
                    f"The interrupted run in {folder} used different settings; rerun it with the same settings "
                    "and --resume, or delete that folder to start over."
                )
            checkpoint.state = old
        elif folder.exists():
            shutil.rmtree(folder)  # a state that never got its first file written holds nothing to resume
        return checkpoint

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    @property
    def layers_done(self) -> int:
        return int(self.state["layers_done"])

    @property
    def scores(self) -> dict[str, float] | None:
        return self.state.get("scores")

    def _save_state(self) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.state, indent=1)
        _write_atomically(self.folder / "state.json", lambda p: p.write_text(text))

    def save_scores(self, scores: dict[str, float]) -> None:
        self.state["scores"] = scores
        self._save_state()

    def save_layer(self, layout: Layout, index: int, hashes: dict[str, str]) -> None:
        """Persist layer ``index`` (pruned), then advance ``layers_done`` past it."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {info.name: info.module.weight.detach().cpu().contiguous() for info in layout.linears[index]}
        _write_atomically(self.folder / f"layer_{index}.safetensors", lambda p: save_file(tensors, str(p)))
        self.state["mask_sha256"].update(hashes)
        self.state["layers_done"] = index + 1
        self._save_state()

    @property
    def saved_hashes(self) -> dict[str, str]:
        """Mask hashes of the layers already pruned and saved."""
        return dict(self.state["mask_sha256"])

    def restore_layer(self, layout: Layout, index: int) -> None:
        """Put the saved pruned weights of layer ``index`` (< ``layers_done``) back into the model."""
        if self.folder is None:
            return
        saved = load_file(str(self.folder / f"layer_{index}.safetensors"))
        with torch.no_grad():
            for info in layout.linears[index]:
                info.module.weight.copy_(saved[info.name])

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

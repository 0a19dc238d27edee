"""Resumable runs: finished stages and pruned layers, kept beside the output until it is written.

    lsaf run ... --output out/lsa-70            # killed at layer 17
    lsaf run ... --output out/lsa-70 --resume   # scores reused, layers 0-16 loaded, pruning goes on at 17

The state lives in ``.<output name>.partial/`` next to the output: ``state.json`` (the config's
fingerprint, the model's content hash, the unit scores once scoring is done, the number of pruned
layers) and one safetensors file per pruned layer. Every file is written to a temporary name and
renamed, so a SIGKILL (or a full disk) at any instant leaves either the old or the new state. On
resume the activations at the first unfinished layer are recomputed by running the calibration batch
through the already-pruned layers, which gives bit-identical inputs, hence identical masks and weights.
A resume against other settings or other weights (same path, different content) is refused, and so is
a damaged state, each with one sentence.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lsa_framework.engine.masks import MaskSet
from lsa_framework.errors import BadInputError
from lsa_framework.model import tensorfile
from lsa_framework.storage.atomic import DiskFullError, disk_full, is_disk_full, make_folder, write_json
from lsa_framework.types import Layout, UnitScore

#: RunConfig fields that do not change what is computed, so a resume may differ in them.
NOT_FINGERPRINTED = frozenset({"output", "overwrite", "resume", "threads", "device", "offload", "eval", "eval_opts"})
#: The file that makes a ``.NAME.partial`` folder lsaf's own (so lsaf may remove it).
PARTIAL_MARKER = ".lsaf-partial"
#: Packed masks are stored beside the weights in a layer file under this prefix.
MASK_PREFIX = "mask::"


def fingerprint(config: Any) -> str:
    data = {k: v for k, v in config.model_dump(mode="json").items() if k not in NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def partial_dir(output: Path) -> Path:
    output = output.resolve()
    return output.parent / f".{output.name}.partial"


def is_own_partial(folder: Path) -> bool:
    """Whether ``folder`` is a resume state lsaf created (its marker, or a state.json of ours)."""
    return (folder / PARTIAL_MARKER).is_file() or (folder / "state.json").is_file()


class Checkpoint:
    """The on-disk state of one run; a no-op when the run has no output folder."""

    def __init__(self, folder: Path | None, config_fingerprint: str, model_sha256: str = "") -> None:
        self.folder = folder
        self.fingerprint = config_fingerprint
        self.state: dict[str, Any] = {
            "fingerprint": config_fingerprint,
            "model_sha256": model_sha256,
            "layers_done": 0,
            "mask_sha256": {},
        }

    @classmethod
    def open(cls, config: Any, model_sha256: str = "", folder: Path | None = None) -> Checkpoint:
        """Start or resume the checkpoint of ``config`` (in ``folder``, by default beside its output);
        refuse to silently reuse or drop old state."""
        if folder is None:
            if config.output is None:
                if config.resume:
                    raise BadInputError(
                        "--resume needs --output: the resumable state is kept beside the output folder."
                    )
                return cls(None, "")
            folder = partial_dir(config.output)
        checkpoint = cls(folder, fingerprint(config), model_sha256)
        state_file = folder / "state.json"
        if state_file.exists():
            old = checkpoint._read_state(state_file)
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
            checkpoint.bind_model(model_sha256, config.model)
            checkpoint._check_layers()
        elif folder.exists():
            if not is_own_partial(folder):
                raise BadInputError(
                    f"{folder} exists but was not written by lsaf; move it away, it is where lsaf keeps the "
                    "resumable state of this output."
                )
            shutil.rmtree(folder)  # lsaf's own state that never got its first file written: nothing to resume
        return checkpoint

    def bind_model(self, model_sha256: str, model: str) -> None:
        """Record the content hash of the weights being pruned; a resume must find the same weights."""
        if not model_sha256:
            return
        saved = self.state.get("model_sha256")
        if saved and saved != model_sha256:
            raise BadInputError(
                f"The interrupted run in {self.folder} pruned other weights than those now at {model} (their "
                "content hash differs); restore that model, or delete that folder to start over."
            )
        self.state["model_sha256"] = model_sha256

    def _damaged(self, what: str) -> BadInputError:
        return BadInputError(
            f"The resumable state in {self.folder} is damaged ({what}); delete that folder to start over."
        )

    def _read_state(self, state_file: Path) -> dict[str, Any]:
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self._damaged(f"state.json is not readable JSON: {type(exc).__name__}") from None
        if not isinstance(state, dict) or not isinstance(state.get("layers_done"), int):
            raise self._damaged("state.json lacks its layer count")
        if not isinstance(state.get("mask_sha256"), dict):
            raise self._damaged("state.json lacks its mask hashes")
        return state

    def _check_layers(self) -> None:
        """Every saved layer file is there and complete, before any work is spent on the resume."""
        for index in range(self.layers_done):
            path = self._layer_file(index)
            if not path.is_file():
                raise self._damaged(f"{path.name} is missing")
            try:
                tensorfile.check_complete(path)
            except BadInputError:
                raise self._damaged(f"{path.name} is truncated or not a safetensors file") from None

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    @property
    def layers_done(self) -> int:
        return int(self.state["layers_done"])

    @property
    def scores(self) -> dict[str, UnitScore] | None:
        return self.state.get("scores")

    def _layer_file(self, index: int) -> Path:
        assert self.folder is not None
        return self.folder / f"layer_{index}.safetensors"

    def _ensure_folder(self) -> None:
        assert self.folder is not None
        if not self.folder.exists():
            make_folder(self.folder)
            (self.folder / PARTIAL_MARKER).touch()

    def _save_state(self) -> None:
        if self.folder is None:
            return
        self._ensure_folder()
        try:
            write_json(self.folder / "state.json", self.state)
        except DiskFullError as exc:
            raise disk_full(self.folder / "state.json", exc, resumable=True) from exc

    def save_scores(self, scores: dict[str, UnitScore]) -> None:
        self.state["scores"] = scores
        self._save_state()

    def save_layer(self, layout: Layout, index: int, masks: MaskSet) -> None:
        """Persist layer ``index`` (pruned: its weights and packed masks), then advance ``layers_done``."""
        if self.folder is None:
            return
        self._ensure_folder()
        tensors = {info.name: info.weight.detach().cpu().contiguous() for info in layout.linears[index]}
        pruned = [info.name for info in layout.linears[index] if info.name in masks.packed]
        tensors.update({MASK_PREFIX + name: masks.packed[name] for name in pruned})
        shapes = json.dumps({name: list(masks.shapes[name]) for name in pruned})
        hashes = {name: masks.hashes[name] for name in pruned}
        path = self._layer_file(index)
        try:
            tensorfile.write_tensors(path, tensors, metadata={"mask_shapes": shapes})
        except Exception as exc:
            if is_disk_full(exc) or isinstance(exc, DiskFullError):
                raise disk_full(path, exc, resumable=True) from exc
            raise
        self.state["mask_sha256"].update(hashes)
        self.state["layers_done"] = index + 1
        self._save_state()

    @property
    def saved_hashes(self) -> dict[str, str]:
        """Mask hashes of the layers already pruned and saved."""
        return dict(self.state["mask_sha256"])

    def restore_layer(self, layout: Layout, index: int, masks: MaskSet) -> None:
        """Put the saved pruned weights of layer ``index`` (< ``layers_done``) back into the model, and
        its masks into ``masks``."""
        if self.folder is None:
            return
        path = self._layer_file(index)
        try:
            shapes = json.loads(tensorfile.read_metadata(path).get("mask_shapes", "{}"))
            names = [info.name for info in layout.linears[index]]
            saved = tensorfile.read_tensors(path, names + [MASK_PREFIX + name for name in shapes])
        except (BadInputError, ValueError):
            raise self._damaged(f"{path.name} lacks some of layer {index}'s weights or is truncated") from None
        with torch.no_grad():
            for info in layout.linears[index]:
                info.weight.copy_(saved[info.name])
        for name, shape in shapes.items():
            masks.add_packed(name, saved[MASK_PREFIX + name], tuple(shape))

    def discard(self) -> None:
        if self.folder is not None and self.folder.exists() and is_own_partial(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)

"""The ``masks`` exporter and ``lsaf apply``: the pruning masks alone, and the model rebuilt from them.

    lsaf run ... --export safetensors,masks --output out/lsa-70     # out/lsa-70/masks/ (~13 MB for 135M weights)
    lsaf apply out/lsa-70/masks --model smollm2-135m --output rebuilt   # rebuilt/model == out/lsa-70/model

``masks/masks.safetensors`` holds every pruned linear's mask bit-packed (uint8, eight weights per byte,
row-major over the (out, in) weight, True = pruned), with the base model's identity (its name, where it
was read from, and the sha256 of its weight files) and the pruner in the file's metadata;
``masks/run.json`` is the run's report. ``lsaf apply`` zeroes exactly those weights of the base model,
which rebuilds the pruned model bit for bit for pruners that only remove weights (magnitude, Wanda). It
refuses masks of a pruner that also updates the kept weights (SparseGPT), and a base model whose
content hash differs from the recorded one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from lsa_framework.errors import BadInputError
from lsa_framework.hookspecs import hookimpl
from lsa_framework.model import tensorfile
from lsa_framework.types import ExportContext, PluginOptions

MASKS_FILE = "masks.safetensors"
APPLY_KIND = "apply"


class MasksExporter:
    name: ClassVar[str] = "masks"
    folder: ClassVar[str] = "masks"
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else PluginOptions()

    def export(self, context: ExportContext, folder: Path) -> None:
        masks = context.masks
        config = context.result.config
        from lsa_framework import registry

        pruner = registry.lookup("pruners", config.pruner).cls
        metadata = {
            "format": "lsaf-masks-1",
            "base_model": str(context.base_identity.get("model", "")),
            "base_source": str(context.base_identity.get("source", "")),
            "base_sha256": str(context.base_identity.get("sha256", "")),
            "pruner": config.pruner,
            "pruner_updates_weights": json.dumps("updates_weights" in getattr(pruner, "capabilities", ())),
            "shapes": json.dumps({name: list(masks.shapes[name]) for name in masks}),
            "mask_sha256": json.dumps(dict(masks.hashes)),
        }
        tensorfile.write_tensors(folder / MASKS_FILE, {name: masks.packed[name] for name in masks}, metadata)
        (folder / "run.json").write_text(json.dumps(context.result.to_json(), indent=2) + "\n")


@hookimpl
def lsaf_register_exporters(register: Any) -> None:
    register(MasksExporter)


def read_masks(folder: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and the unpacked masks of a ``masks/`` folder."""
    from lsa_framework.engine.masks import unpack

    path = folder / MASKS_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise BadInputError(
            f"{folder} holds no {MASKS_FILE}; pass the masks/ folder of an lsaf run with --export masks."
        )
    metadata = tensorfile.read_metadata(path)
    if metadata.get("format") != "lsaf-masks-1":
        raise BadInputError(f"{path} is not an lsaf masks file; pass the masks/ folder of an lsaf run.")
    shapes = json.loads(metadata["shapes"])
    packed = tensorfile.read_tensors(path, list(shapes))
    return metadata, {name: unpack(packed[name], tuple(shape)) for name, shape in shapes.items()}


def apply_masks(masks_folder: Path, model: str, output: Path, overwrite: bool = False, dtype: str = "float32") -> Any:
    """Zero the masked weights of ``model`` and write it to ``output`` (``model/``, run.json, report.md)."""
    from lsa_framework.config import build_config
    from lsa_framework.engine.observer import stage
    from lsa_framework.engine.pipeline import claimed_output
    from lsa_framework.engine.session import Session
    from lsa_framework.evaluators.sparsity import count_sparsity
    from lsa_framework.model.loading import protected_paths
    from lsa_framework.report.output import write_folder, write_report
    from lsa_framework.result import RunResult

    metadata, masks = read_masks(masks_folder)
    if json.loads(metadata.get("pruner_updates_weights", "false")):
        raise BadInputError(
            f"The masks in {masks_folder} come from {metadata.get('pruner')!r}, which also updates the kept weights, "
            "so the masks alone cannot rebuild its model; use the run's model/ folder instead."
        )
    config = build_config({"model": model, "dtype": dtype, "output": output, "overwrite": overwrite, "eval": []})
    with claimed_output(config, APPLY_KIND) as target:
        assert target is not None
        result = RunResult(config=config, kind=APPLY_KIND)
        session = Session(config, _NoData(), _quiet())  # type: ignore[arg-type]
        session.load(result)
        session.describe(result)
        if metadata.get("base_sha256") and session.model_sha256 != metadata["base_sha256"]:
            raise BadInputError(
                f"The masks in {masks_folder} were made for weights with content hash {metadata['base_sha256'][:16]}, "
                f"but {model} has {session.model_sha256[:16]}; pass the base model they were made for "
                f"({metadata.get('base_model')})."
            )
        layout = session.layout
        assert layout is not None
        by_name = {info.name: info for info in layout.all_linears()}
        unknown = sorted(set(masks) - set(by_name))
        if unknown:
            raise BadInputError(f"{model} has no linear {unknown[0]} that the masks prune; pass their base model.")
        with stage(result, "apply"), torch.no_grad():
            for index, linears in enumerate(layout.linears):
                with layout.resident(index):
                    for info in linears:
                        if info.name in masks:
                            info.weight.masked_fill_(masks[info.name].to(info.weight.device), 0)
        result.metrics = count_sparsity(layout)
        result.extra["masks"] = {"folder": str(masks_folder), **{k: metadata[k] for k in ("base_model", "pruner")}}
        loaded = session.loaded
        assert loaded is not None

        def fill(tmp: Path) -> None:
            loaded.save(tmp / "model")
            loaded.tokenizer.save_pretrained(tmp / "model")
            write_report(result, tmp)

        with stage(result, "save"):
            write_folder(APPLY_KIND, target, overwrite, protected_paths(model), fill)
        result.output = target
    return result


class _NoData:
    """``lsaf apply`` reads no text."""

    name = "none"
    instance = None

    def documents(self, split: str) -> list[str]:
        raise BadInputError("lsaf apply reads no calibration text.")


def _quiet() -> Any:
    from lsa_framework.engine.observer import Observer

    return Observer()

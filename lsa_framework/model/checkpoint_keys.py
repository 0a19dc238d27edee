"""Where a model's in-memory tensor is stored in its safetensors checkpoint, for ``--offload disk``.

    lsaf run --model ./mixtral-like --offload disk --output out/moe-50

Mostly the tensor's own name. Mixtures of experts differ: transformers 5 holds the experts of a layer as
two fused parameters, but checkpoints (and ``save_pretrained``) store each expert as three (out, in)
matrices, and Mixtral stores its sparse block under another name. transformers converts them on load
(``transformers.conversion_mapping``); reading one layer at a time, lsaf does the same for the two
schemes that mapping uses for every MoE family with this layout:

* Qwen2-MoE style (also Qwen3-MoE, DeepSeek, OLMoE, GLM-4-MoE, ...): ``{block}.experts.{e}.gate_proj``,
  ``up_proj`` and ``down_proj``;
* Mixtral style: ``{block}.experts.{e}.w1`` (gate), ``w3`` (up) and ``w2`` (down), with the block
  ``block_sparse_moe`` on disk where it is ``mlp`` in memory.

``gate_up_proj[e]`` is [gate; up] (rows concatenated) and ``down_proj[e]`` is down; pruned tensors are
written back under the very keys they were read from, so the saved folder is laid out as the original.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lsa_framework.model import tensorfile

#: In-memory module path → its name on disk, tried when a tensor's own name is not in the checkpoint.
RENAMES: tuple[tuple[str, str], ...] = ((".mlp.", ".block_sparse_moe."),)
#: Fused expert parameter → the per-expert matrices (concatenated by rows) in each naming scheme.
EXPERT_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "gate_up_proj": (("gate_proj", "up_proj"), ("w1", "w3")),
    "down_proj": (("down_proj",), ("w2",)),
}

Key = tuple[Path, str]


@dataclass(frozen=True)
class Source:
    """One in-memory tensor in the checkpoint: a single key, or (fused experts, ``stacked``) per expert the
    keys whose rows are concatenated, stacked over the experts."""

    parts: tuple[tuple[Key, ...], ...]
    stacked: bool = False

    @classmethod
    def plain(cls, file: Path, key: str) -> Source:
        return cls((((file, key),),))

    @property
    def keys(self) -> list[str]:
        """The checkpoint keys, in order."""
        return [key for expert in self.parts for _, key in expert]

    def moved(self, file: Path) -> Source:
        """The same keys, in ``file``."""
        return Source(tuple(tuple((file, key) for _, key in expert) for expert in self.parts), self.stacked)

    def split(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """The checkpoint tensors of ``tensor`` (the inverse of reading), by key."""
        if not self.stacked:
            return {self.parts[0][0][1]: tensor}
        found: dict[str, torch.Tensor] = {}
        for e, expert in enumerate(self.parts):
            for (_, key), piece in zip(expert, tensor[e].chunk(len(expert), dim=0), strict=True):
                found[key] = piece
        return found


def find_source(name: str, tensor: torch.Tensor, files: Mapping[str, Path]) -> Source | None:
    """Where the tensor ``name`` (its meta tensor gives the number of experts) is in ``files`` (key → file)."""
    candidates = [name] + [name.replace(memory, disk, 1) for memory, disk in RENAMES if memory in name]
    for candidate in candidates:
        if candidate in files:
            return Source.plain(files[candidate], candidate)
    base, _, leaf = name.rpartition(".")
    if tensor.dim() != 3 or leaf not in EXPERT_KEYS or not base.endswith("experts"):
        return None
    for candidate in [base] + [base.replace(memory, disk, 1) for memory, disk in RENAMES if memory in base]:
        for scheme in EXPERT_KEYS[leaf]:
            keys = [[f"{candidate}.{e}.{short}.weight" for short in scheme] for e in range(int(tensor.shape[0]))]
            if all(key in files for expert in keys for key in expert):
                return Source(tuple(tuple((files[key], key) for key in expert) for expert in keys), stacked=True)
    return None


def read_sources(sources: Mapping[str, Source], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Tensors by name; plain ones one open per file, fused ones expert by expert into their final tensor
    (so a layer's experts cost their own size plus one expert, not twice their size). Floats cast to ``dtype``."""
    by_file: dict[Path, list[tuple[str, str]]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, source in sources.items():
        if source.stacked:
            tensors[name] = _read_stacked(source, dtype)
        else:
            file, key = source.parts[0][0]
            by_file.setdefault(file, []).append((name, key))
    for file, pairs in by_file.items():
        found = tensorfile.read_tensors(file, [key for _, key in pairs])
        for name, key in pairs:
            tensor = found.pop(key)
            tensors[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return tensors


def _read_stacked(source: Source, dtype: torch.dtype) -> torch.Tensor:
    out: torch.Tensor | None = None
    for e, expert in enumerate(source.parts):
        pieces = [tensorfile.read_tensors(file, [key])[key] for file, key in expert]
        joined = torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0]
        if out is None:
            out = torch.empty((len(source.parts), *joined.shape), dtype=dtype)
        out[e].copy_(joined)
    assert out is not None
    return out

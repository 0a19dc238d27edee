"""``--offload disk``: prune a model larger than memory, one decoder layer in memory at a time.

    lsaf run --model ./big-model --offload disk --output out/big-50

The model is built with its parameters on the ``meta`` device (no memory); only what is outside the
decoder layers (embeddings, final norm, LM head) is read into memory. Each decoder layer's weights are
read from the safetensors shards when a pass enters ``layout.resident(i)`` (or a forward reaches the
layer) and dropped when it leaves. A layer whose tensors changed meanwhile (it was pruned) is first
written to its own shard in a staging folder, which becomes its source from then on, so evaluation
reads the pruned weights and saving the model moves finished shards instead of rewriting them.
Peak memory is therefore the non-layer weights, about two layers and the calibration activations,
whatever the depth. Fused experts (mixtures of experts) are assembled from the checkpoint's per-expert
matrices and written back under their keys (:mod:`lsa_framework.model.checkpoint_keys`).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lsa_framework.errors import BadInputError
from lsa_framework.model import tensorfile
from lsa_framework.model.checkpoint_keys import Source, find_source, read_sources

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device and buffers as usual.

    Buffers such as rotary frequencies are computed at construction and often not saved, so they
    must stay real; parameters all come from the checkpoint, so they need no memory until then.
    """
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            registered = module._parameters[name]
            assert registered is not None
            module._parameters[name] = torch.nn.Parameter(registered.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def tensor_files(folder: Path) -> dict[str, Path]:
    """Which safetensors file of ``folder`` holds each tensor (sharded or single-file checkpoints)."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise BadInputError(f"{index} is not a readable weight index; save the model again.") from None
        files = {key: folder / name for key, name in weight_map.items()}
        missing = sorted({path.name for path in files.values() if not path.is_file()})
        if missing:
            raise BadInputError(
                f"{folder} lacks the weight shard {missing[0]} named in {INDEX_FILE} ({len(missing)} missing); "
                "restore the model folder or save it again."
            )
        return files
    single = folder / SINGLE_FILE
    if single.is_file():
        return dict.fromkeys(tensorfile.tensor_names(single), single)
    raise BadInputError(
        f"--offload disk reads weights from safetensors files, but {folder} has neither {SINGLE_FILE} nor "
        f"{INDEX_FILE}; save the model with safetensors or run without --offload."
    )


def _set_tensor(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace a parameter or buffer (dotted ``name``) of ``module`` by ``value``."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    old = owner._parameters.get(leaf)
    if leaf in owner._parameters and old is not None:
        owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        owner._buffers[leaf] = value


def _tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by name (what a checkpoint holds)."""
    return dict(module.state_dict(keep_vars=True))


def _versions(module: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Identity and in-place version of every tensor: a change of either means the layer was edited."""
    return {name: (id(t), t._version) for name, t in _tensors_of(module).items()}


class DiskLayers:
    """The decoder layers of a model loaded with ``--offload disk``: a write-back cache of one layer.

    ``resident(i)`` nests (a forward inside a pass does not reload); the outermost exit writes the
    layer to ``staging`` if its tensors changed, then frees it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layers: Sequence[torch.nn.Module],
        files: dict[str, Path],
        dtype: torch.dtype,
        staging: Path,
    ) -> None:
        names = {id(module): name for name, module in model.named_modules()}
        self.model = model
        self.layers = list(layers)
        self.prefixes = [f"{names[id(layer)]}." for layer in self.layers]
        self.dtype = dtype
        self.staging = staging
        self.device = torch.device("cpu")
        self.sources: list[dict[str, Source]] = []
        for layer, prefix in zip(self.layers, self.prefixes, strict=True):
            found = {n: find_source(prefix + n, t, files) for n, t in _tensors_of(layer).items()}
            missing = [prefix + n for n, source in found.items() if source is None]
            if missing:
                raise BadInputError(
                    f"The checkpoint has no tensor {missing[0]} ({len(missing)} missing in {prefix.rstrip('.')}); "
                    "check that the model folder is complete."
                )
            self.sources.append({n: source for n, source in found.items() if source is not None})
        self.staged: set[int] = set()
        self._original_sources = [dict(sources) for sources in self.sources]
        self._depth = [0] * len(self.layers)
        self._loaded_versions: list[dict[str, tuple[int, int]]] = [{} for _ in self.layers]
        for index, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(lambda *_a, i=index: self._enter(i))
            layer.register_forward_hook(lambda *_a, i=index: self._exit(i), always_call=True)

    @contextmanager
    def resident(self, index: int) -> Iterator[None]:
        """Layer ``index`` is in memory inside the block."""
        self._enter(index)
        try:
            yield
        finally:
            self._exit(index)

    def _enter(self, index: int) -> None:
        if self._depth[index] == 0:
            layer = self.layers[index]
            for name, tensor in read_sources(self.sources[index], self.dtype).items():
                _set_tensor(layer, name, tensor.to(self.device))
            self._loaded_versions[index] = _versions(layer)
        self._depth[index] += 1

    def _exit(self, index: int) -> None:
        self._depth[index] -= 1
        if self._depth[index] > 0:
            return
        layer = self.layers[index]
        if _versions(layer) != self._loaded_versions[index]:
            self._stage(index)
        for name, tensor in _tensors_of(layer).items():
            _set_tensor(layer, name, tensor.detach().to("meta"))
        _return_freed_memory()

    def shard_name(self, index: int) -> str:
        return f"layer-{index:05d}.safetensors"

    def _stage(self, index: int) -> None:
        """Write the resident layer to its own shard, under its checkpoint keys, and read it from there from now on."""
        self.staging.mkdir(parents=True, exist_ok=True)
        sources = self.sources[index]
        tensors: dict[str, torch.Tensor] = {}
        for n, t in _tensors_of(self.layers[index]).items():
            tensors.update(sources[n].split(t))
        path = self.staging / self.shard_name(index)
        tensorfile.write_tensors(path, tensors, metadata={"format": "pt"})
        self.sources[index] = {n: source.moved(path) for n, source in sources.items()}
        self.staged.add(index)

    def reset(self) -> None:
        """Read every layer from the original checkpoint again (the dense model), forgetting staged shards."""
        self.sources = [dict(sources) for sources in self._original_sources]
        self.staged.clear()

    def place(self, device: torch.device) -> None:
        """Move what is outside the decoder layers to ``device``; layers will load onto it."""
        layer_ids = {id(m) for layer in self.layers for m in layer.modules()}
        for module in self.model.modules():
            if id(module) not in layer_ids:
                module._apply(lambda t: t.to(device), recurse=False)
        self.device = device

    def save(self, folder: Path) -> None:
        """Write the model as a sharded safetensors checkpoint that ``from_pretrained`` reads.

        Shards already staged are hard-linked (or copied) rather than rewritten; a layer never staged
        (nothing in it was pruned) is staged first.
        """
        folder.mkdir(parents=True, exist_ok=True)
        outside = self._outside_tensors()
        head = "model-outside-layers.safetensors"
        tensorfile.write_tensors(folder / head, outside, metadata={"format": "pt"})
        weight_map = dict.fromkeys(outside, head)
        total = sum(t.numel() * t.element_size() for t in outside.values())
        for index, layer in enumerate(self.layers):
            if index not in self.staged:
                with self.resident(index):
                    self._stage(index)
            name = self.shard_name(index)
            _link_or_copy(self.staging / name, folder / name)
            for local, tensor in _tensors_of(layer).items():  # meta tensors: shape and dtype only
                weight_map.update(dict.fromkeys(self.sources[index][local].keys, name))
                total += tensor.numel() * tensor.element_size()
        index_data = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_FILE).write_text(json.dumps(index_data, indent=2) + "\n")
        config = getattr(self.model, "config", None)
        if config is not None:
            config.save_pretrained(folder)
        generation = getattr(self.model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(folder)

    def _outside_tensors(self) -> dict[str, torch.Tensor]:
        """The checkpoint tensors outside the decoder layers, tied duplicates (LM head) dropped."""
        seen: set[int] = set()
        tensors: dict[str, torch.Tensor] = {}
        for name, tensor in _tensors_of(self.model).items():
            if name.startswith(tuple(self.prefixes)) or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            tensors[name] = tensor
        return tensors


#: glibc's M_MMAP_THRESHOLD: blocks at least this large get their own mapping, returned on free.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1 << 20


def _return_freed_memory() -> None:
    """Give the freed layer's memory back to the OS now (a no-op without glibc)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _map_large_blocks() -> None:
    """Make every block of 1 MiB or more its own mapping, given back to the OS when freed.

    glibc raises its mmap threshold (up to 32 MiB) after large blocks are freed and then serves
    them from the heap, where a loop that loads and frees one layer at a time leaves fragments that
    pile up: on a 1.2B model peak RSS grew by 450 MB over the layers. Fixing the threshold stops it.
    Process-wide, so it is set only for offloaded runs, whose point is memory. No-op without glibc.
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def load_offloaded(folder: Path, dtype: torch.dtype, staging: Path) -> tuple[Any, DiskLayers]:
    """The model of ``folder`` with only its non-layer weights in memory, and its disk-backed layers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lsa_framework.model.discovery import check_supported, decoder_stack

    _map_large_blocks()
    files = tensor_files(folder)
    config = AutoConfig.from_pretrained(str(folder))
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    check_supported(model)
    _, stack = decoder_stack(model)
    disk = DiskLayers(model, list(stack), files, dtype, staging)
    outside = {
        name: Source.plain(files[name], name)
        for name in _tensors_of(model)
        if not name.startswith(tuple(disk.prefixes)) and name in files
    }
    for name, tensor in read_sources(outside, dtype).items():
        _set_tensor(model, name, tensor)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    left = [
        name
        for name, tensor in _tensors_of(model).items()
        if tensor.is_meta and not name.startswith(tuple(disk.prefixes))
    ]
    if left:
        raise BadInputError(
            f"The checkpoint in {folder} has no tensor {left[0]}; check that the model folder is complete."
        )
    return model, disk

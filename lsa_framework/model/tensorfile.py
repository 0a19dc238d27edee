"""Read and write safetensors files tensor by tensor, without a second copy in memory.

The ``safetensors`` package maps the whole file (its touched pages count in the process's resident
memory while the file is open) and ``save_file`` serialises every tensor to bytes before writing.
For one decoder layer of a large model that doubles the layer's footprint at the worst moment.
Here a tensor is read straight into its own storage with ``readinto`` and written straight from it,
so streaming a layer costs the layer itself. The format is the standard one (8-byte little-endian
header length, JSON header, raw little-endian data), so files interoperate with ``safetensors``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch

from lsa_framework.errors import BadInputError
from lsa_framework.storage.atomic import write_file

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {dtype: code for code, dtype in DTYPES.items()}


def read_header(f: BinaryIO, path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of an open safetensors file and the offset where its data starts."""
    size = int.from_bytes(f.read(8), "little")
    try:
        header = json.loads(f.read(size))
    except ValueError as exc:
        raise BadInputError(f"{path} is not a readable safetensors file ({exc}); re-save the model.") from exc
    if not isinstance(header, dict):
        raise BadInputError(f"{path} is not a readable safetensors file (no header); re-save the model.")
    return header, 8 + size


def _open(path: Path, buffering: int = -1) -> Any:
    try:
        return open(path, "rb", buffering=buffering)
    except FileNotFoundError:
        raise BadInputError(f"The weight file {path} is missing; restore the model folder or save it again.") from None
    except OSError as exc:
        raise BadInputError(f"The weight file {path} cannot be read ({exc.strerror}); check it.") from None


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file."""
    with _open(path) as f:
        header, _ = read_header(f, path)
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def tensor_names(path: Path) -> list[str]:
    with _open(path) as f:
        header, _ = read_header(f, path)
    return [name for name in header if name != "__metadata__"]


def check_complete(path: Path) -> None:
    """Raise unless ``path`` has a readable header and all the data it announces (cheap: no data read)."""
    with _open(path) as f:
        header, base = read_header(f, path)
        size = f.seek(0, os.SEEK_END)
    try:
        end = max((int(info["data_offsets"][1]) for name, info in header.items() if name != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise BadInputError(f"{path} has a malformed safetensors header; re-save the model.") from None
    if base + end > size:
        raise BadInputError(f"{path} is truncated ({size} of {base + end} bytes); re-save the model.")


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """The tensor's storage as writable bytes (no copy; the tensor must be contiguous on the CPU)."""
    array: Any = tensor.reshape(-1).view(torch.uint8).numpy()
    return memoryview(array)


def read_tensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of one file, each read directly into a fresh tensor."""
    tensors: dict[str, torch.Tensor] = {}
    with _open(path, buffering=0) as f:
        header, base = read_header(f, path)
        for name in names:
            info = header.get(name)
            if info is None or info.get("dtype") not in DTYPES:
                raise BadInputError(f"{path} has no readable tensor {name!r}; check that the model folder is complete.")
            start, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
            if tensor.numel() * tensor.element_size() != end - start:
                raise BadInputError(f"The tensor {name!r} in {path} has inconsistent offsets; re-save the model.")
            if tensor.numel():
                view = _bytes_of(tensor)
                f.seek(base + start)
                done = 0
                while done < len(view):  # one read may return less than asked (e.g. above 2 GiB)
                    got = f.readinto(view[done:])
                    if not got:
                        raise BadInputError(f"{path} ends inside tensor {name!r}; the file is truncated.")
                    done += got
            tensors[name] = tensor
    return tensors


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file at ``path``, atomically."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    header: dict[str, Any] = {"__metadata__": metadata or {}}
    offset = 0
    for name, tensor in cpu.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data aligned to 8 bytes, as the format recommends

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(len(encoded).to_bytes(8, "little"))
            f.write(encoded)
            for tensor in cpu.values():
                if tensor.numel():
                    f.write(_bytes_of(tensor))

    write_file(path, write)

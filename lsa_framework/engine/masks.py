"""The masks of a run, kept bit-packed as the layers are pruned (135M weights: 17 MB).

A mask is a bool tensor shaped like the (out, in) weight, True where the pruner zeroed the weight.
Its hash (sha256 of the unpacked bool bytes, first 16 hex digits) is what run.json records per linear.
The packed form is what the ``masks`` exporter writes and ``lsaf apply`` reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch


def mask_hash(mask: torch.Tensor) -> str:
    packed = mask.to(device="cpu", dtype=torch.bool).contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(packed).hexdigest()[:16]


def pack(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as uint8, eight entries per byte (row-major, most significant bit first)."""
    bits = mask.to(device="cpu", dtype=torch.bool).contiguous().numpy().reshape(-1)
    return torch.from_numpy(np.packbits(bits))


def unpack(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    count = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(packed.numpy(), count=count)
    return torch.from_numpy(bits.astype(np.bool_)).reshape(shape)


@dataclass
class MaskSet:
    """Packed masks and their hashes, by linear name, in pruning order."""

    packed: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, mask: torch.Tensor) -> None:
        self.packed[name] = pack(mask)
        self.shapes[name] = tuple(mask.shape)
        self.hashes[name] = mask_hash(mask)

    def add_packed(self, name: str, packed: torch.Tensor, shape: tuple[int, ...]) -> None:
        """A mask restored from a checkpoint."""
        self.packed[name] = packed
        self.shapes[name] = shape
        self.hashes[name] = mask_hash(unpack(packed, shape))

    def mask(self, name: str) -> torch.Tensor:
        return unpack(self.packed[name], self.shapes[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.packed)

    def __len__(self) -> int:
        return len(self.packed)

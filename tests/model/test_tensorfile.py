"""Our streaming safetensors reader and writer interoperate with the safetensors package."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lsa_framework.errors import BadInputError
from lsa_framework.model import tensorfile


def _samples() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "w32": torch.randn(5, 7, generator=gen),
        "w16": torch.randn(3, 4, generator=gen).to(torch.float16),
        "wbf": torch.randn(6, generator=gen).to(torch.bfloat16),
        "ids": torch.arange(9, dtype=torch.int64).reshape(3, 3),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


def test_files_we_write_load_with_safetensors(tmp_path):
    tensors = _samples()
    tensorfile.write_tensors(tmp_path / "a.safetensors", tensors, metadata={"format": "pt"})
    loaded = load_file(str(tmp_path / "a.safetensors"))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    assert not list(tmp_path.glob(".*tmp")), "no temporary file may be left behind"


def test_we_read_files_safetensors_writes(tmp_path):
    tensors = _samples()
    save_file(tensors, str(tmp_path / "b.safetensors"))
    assert sorted(tensorfile.tensor_names(tmp_path / "b.safetensors")) == sorted(tensors)
    got = tensorfile.read_tensors(tmp_path / "b.safetensors", ["w32", "wbf", "scalar", "empty", "flags"])
    for name, tensor in got.items():
        assert tensor.dtype == tensors[name].dtype and torch.equal(tensor, tensors[name]), name


def test_missing_and_truncated_tensors_are_reported(tmp_path):
    path = tmp_path / "c.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(path))
    with pytest.raises(BadInputError, match="no readable tensor 'v'"):
        tensorfile.read_tensors(path, ["v"])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BadInputError, match="truncated"):
        tensorfile.read_tensors(path, ["w"])

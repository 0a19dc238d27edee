"""The ``file`` dataset (local .txt/.jsonl split into disjoint parts) and the hub datasets, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lsa_framework.data import files, hub
from lsa_framework.data.files import FileDataset, split_text
from lsa_framework.errors import BadInputError
from tests.fakes import registered_by


def paragraphs(n: int) -> list[str]:
    return [f"Paragraph {i} says something of its own, number {i} of {n}." for i in range(n)]


def dataset(path: Path, **options: Any) -> FileDataset:
    return FileDataset(FileDataset.Options(path=path, **options))


def test_plugin_registers_under_its_name() -> None:
    assert registered_by(files, "lsaf_register_datasets") == [FileDataset]
    assert FileDataset.name == "file"


def test_text_is_cut_at_a_paragraph_boundary(tmp_path: Path) -> None:
    parts = paragraphs(100)
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    data = dataset(path, eval_fraction=0.1)
    [calibration] = data.documents("calibration")
    [evaluation] = data.documents("evaluation")
    assert calibration + "\n\n" + evaluation == "\n\n".join(parts)
    calibration_paragraphs = calibration.split("\n\n")
    evaluation_paragraphs = evaluation.split("\n\n")
    assert set(calibration_paragraphs).isdisjoint(evaluation_paragraphs)
    assert calibration_paragraphs + evaluation_paragraphs == parts  # whole paragraphs only
    share = len(evaluation) / (len(calibration) + len(evaluation))
    assert 0.08 < share < 0.12


def test_text_without_blank_lines_is_cut_at_a_line_break(tmp_path: Path) -> None:
    lines = paragraphs(10)
    path = tmp_path / "lines.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    data = dataset(path, eval_fraction=0.3)
    calibration = data.documents("calibration")[0].split("\n")
    evaluation = data.documents("evaluation")[0].split("\n")
    assert calibration + evaluation == lines
    assert len(evaluation) == 3


def test_split_text_falls_back_to_spaces_and_characters() -> None:
    assert split_text("one two three four", 0.25) == ("one two three", "four")
    assert split_text("abcdefghij", 0.2) == ("abcdefgh", "ij")
    with pytest.raises(BadInputError, match="too short"):
        split_text("a", 0.5)


def test_jsonl_documents_are_split_by_index(tmp_path: Path) -> None:
    texts = paragraphs(20)
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)]
    lines.insert(5, "")  # blank lines are skipped
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = dataset(path, eval_fraction=0.2)
    assert data.documents("calibration") == texts[:16]
    assert data.documents("evaluation") == texts[16:]


def test_jsonl_keeps_at_least_one_document_on_each_side(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    path.write_text('{"text": "First."}\n{"text": "Second."}\n', encoding="utf-8")
    data = dataset(path, eval_fraction=0.01)
    assert data.documents("calibration") == ["First."]
    assert data.documents("evaluation") == ["Second."]


def test_jsonl_with_one_document_is_cut_like_text(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": "\n\n".join(paragraphs(10))}) + "\n", encoding="utf-8")
    data = dataset(path, eval_fraction=0.2)
    calibration, evaluation = data.documents("calibration")[0], data.documents("evaluation")[0]
    assert calibration.split("\n\n") + evaluation.split("\n\n") == paragraphs(10)
    assert len(evaluation.split("\n\n")) == 2


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"Calibration file .*nope\.txt does not exist; "):
        dataset(tmp_path / "nope.txt")


def test_directory_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="is not a file"):
        dataset(tmp_path)


@pytest.mark.parametrize(("name", "content"), [("empty.txt", ""), ("blank.txt", " \n\n \n"), ("empty.jsonl", "\n")])
def test_empty_file_is_bad_input(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BadInputError, match="holds no text"):
        dataset(path)


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match=r"Line 2 .* not valid JSON"):
        dataset(path)
    path.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match=r'Line 2 .* no "text" string'):
        dataset(path)


def test_binary_file_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"\xff\xfe\x00\x81 binary")
    with pytest.raises(BadInputError, match="not UTF-8"):
        dataset(path)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_eval_fraction_must_be_inside_zero_one(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ValidationError):
        FileDataset.Options(path=tmp_path / "x.txt", eval_fraction=fraction)


def test_unknown_option_and_split_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        FileDataset.Options(path=tmp_path / "x.txt", fraction=0.1)  # type: ignore[call-arg]
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(paragraphs(5)), encoding="utf-8")
    with pytest.raises(ValueError, match="split"):
        dataset(path).documents("train")


# --- the hub datasets (wikitext2, c4), with ``datasets.load_dataset`` stood in for ---------------------


class FakeLoad:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.calls = fail, []  # type: ignore[var-annotated]

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, list[str]]:
        self.calls.append((args, kwargs))
        if self.fail:
            raise ConnectionError("Couldn't reach the Hub")
        return {"text": [f"{kwargs['split']} line {i}\n" for i in range(3)]}


def test_wikitext2_joins_splits_as_the_references(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    load = FakeLoad()
    monkeypatch.setattr(datasets, "load_dataset", load)
    monkeypatch.setattr(hub, "_hub_resolves", lambda: True)
    data = hub.WikiText2Dataset()
    assert data.documents("calibration") == ["train line 0\n train line 1\n train line 2\n"]
    assert data.documents("evaluation") == ["test line 0\n\n\ntest line 1\n\n\ntest line 2\n"]
    data.documents("evaluation")  # loaded once
    assert [call[0] for call in load.calls] == [("wikitext", "wikitext-2-raw-v1")] * 2


def test_c4_uses_the_first_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    load = FakeLoad()
    monkeypatch.setattr(datasets, "load_dataset", load)
    monkeypatch.setattr(hub, "_hub_resolves", lambda: True)
    data = hub.C4Dataset(hub.C4Dataset.Options(eval_documents=2))
    assert data.documents("calibration") == ["train line 0\n", "train line 1\n", "train line 2\n"]
    assert data.documents("evaluation") == ["validation line 0\n validation line 1\n"]
    assert load.calls[0][1]["data_files"] == {"train": "en/c4-train.00000-of-01024.json.gz"}
    assert load.calls[1][1]["data_files"] == {"validation": "en/c4-validation.00000-of-00008.json.gz"}


@pytest.mark.parametrize("name", ["wikitext2", "c4"])
def test_unreachable_hub_is_bad_input(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", FakeLoad(fail=True))
    cls = {"wikitext2": hub.WikiText2Dataset, "c4": hub.C4Dataset}[name]
    with pytest.raises(BadInputError, match=f"Could not load {name} from the Hugging Face hub"):
        cls().documents("calibration")


def test_hub_is_not_retried_when_its_name_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    seen: list[bool] = []

    def load(*args: Any, **kwargs: Any) -> None:
        seen.append(datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE)
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", load)
    monkeypatch.setattr(hub, "_hub_resolves", lambda: False)
    before = datasets.config.HF_HUB_OFFLINE
    with pytest.raises(BadInputError, match="no network"):
        hub.WikiText2Dataset().documents("evaluation")
    assert seen == [True]  # only the local cache was tried
    restored = datasets.config.HF_HUB_OFFLINE
    assert restored == before  # and offline mode was undone

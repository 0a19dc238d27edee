"""Dataset ``file``: calibration and evaluation text from a local file.

    lsaf run --calibration my_text.txt
    lsaf run --calibration docs.jsonl --calibration-opt eval_fraction=0.2

Plain text (any suffix but ``.jsonl``, UTF-8): the text is cut once, at the paragraph boundary
nearest to ``1 - eval_fraction`` of its characters (else the nearest line break, else the nearest
space); the part before is the calibration document and the part after the evaluation document.
JSON lines (``.jsonl``): one object with a ``text`` field per line, one document each; the last
``eval_fraction`` of the documents (at least one) are evaluation, the others calibration. A
``.jsonl`` with a single document is cut like plain text. The two splits never share text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from lsa_framework.errors import BadInputError
from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import PluginOptions

#: Where a text may be cut, most preferred first: a blank line, a line break, any whitespace.
_BOUNDARIES = (re.compile(r"\n[ \t\r\f\v]*\n\s*"), re.compile(r"\n\s*"), re.compile(r"\s+"))


def split_text(text: str, eval_fraction: float) -> tuple[str, str]:
    """Cut ``text`` into (calibration, evaluation) near ``1 - eval_fraction`` of its characters."""
    text = text.strip()
    if len(text) < 2:
        raise BadInputError("The text is too short to cut into calibration and evaluation parts; add more text.")
    target = round(len(text) * (1.0 - eval_fraction))
    for pattern in _BOUNDARIES:
        cuts = [(m.start(), m.end()) for m in pattern.finditer(text)]
        if cuts:
            start, end = min(cuts, key=lambda cut: abs(cut[0] - target))
            return text[:start], text[end:]
    target = min(max(target, 1), len(text) - 1)
    return text[:target], text[target:]


def _missing(path: Path) -> BadInputError:
    return BadInputError(
        f"Calibration file {path} does not exist; pass the path of a .txt or .jsonl file, or use --calibration builtin."
    )


def read_jsonl(path: Path, raw: str) -> list[str]:
    """The non-empty ``text`` fields of a JSON-lines file, in order."""
    documents: list[str] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInputError(
                f"Line {number} of {path} is not valid JSON ({exc.msg}); write one JSON object per line."
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise BadInputError(f'Line {number} of {path} has no "text" string; write each line as {{"text": "..."}}.')
        try:
            record["text"].encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON's "\ud800" escapes decode to text no tokenizer takes
            bad = repr(exc.object[exc.start : exc.end])
            raise BadInputError(
                f"Line {number} of {path} holds an invalid character ({bad}, a lone surrogate); "
                "remove it or write the text as valid UTF-8."
            ) from None
        if record["text"].strip():
            documents.append(record["text"])
    return documents


class FileDataset:
    name: ClassVar[str] = "file"
    capabilities: ClassVar[frozenset[str]] = frozenset({"claims_specs"})

    class Options(PluginOptions):
        """A local .txt or .jsonl file, split into calibration and evaluation text."""

        path: Path = Field(description="A UTF-8 text file, or a .jsonl file with a text field per line.")
        eval_fraction: float = Field(
            default=0.1, gt=0.0, lt=1.0, description="Share of the text (or documents) kept for evaluation."
        )

    def __init__(self, options: Options) -> None:
        self.options = options
        self._splits = self._read()

    @classmethod
    def options_for(cls, spec: str) -> dict[str, str] | None:
        """``--calibration PATH``: anything that looks like a path is this plugin's."""
        return {"path": spec} if any(c in spec for c in "/.\\") else None

    def _read(self) -> dict[str, list[str]]:
        path = Path(self.options.path).expanduser()
        if not path.exists():
            raise _missing(path)
        if not path.is_file():
            raise BadInputError(f"Calibration file {path} is not a file; pass a .txt or .jsonl file.")
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise BadInputError(
                f"Calibration file {path} is not UTF-8 text; convert it or pass another file."
            ) from None
        except OSError as exc:
            raise BadInputError(f"Calibration file {path} cannot be read ({exc.strerror}); check it.") from None
        fraction = self.options.eval_fraction
        if path.suffix.lower() == ".jsonl":
            documents = read_jsonl(path, raw)
            if len(documents) >= 2:
                n_eval = min(len(documents) - 1, max(1, round(len(documents) * fraction)))
                return {"calibration": documents[:-n_eval], "evaluation": documents[-n_eval:]}
            raw = documents[0] if documents else ""
        if not raw.strip():
            raise BadInputError(f"Calibration file {path} holds no text; pass a file with text in it.")
        calibration, evaluation = split_text(raw, fraction)
        return {"calibration": [calibration], "evaluation": [evaluation]}

    def documents(self, split: str) -> list[str]:
        """The documents of ``split`` (``"calibration"`` or ``"evaluation"``)."""
        if split not in self._splits:
            raise ValueError(f"split must be 'calibration' or 'evaluation', not {split!r}")
        return list(self._splits[split])


@hookimpl
def lsaf_register_datasets(register: Any) -> None:
    register(FileDataset)

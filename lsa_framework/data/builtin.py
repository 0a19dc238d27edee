"""Dataset ``builtin``: Jane Austen's six novels, offline, split by book.

    lsaf run --calibration builtin --calibration-opt evaluation_books=[emma]

Calibration reads some books and evaluation others, so the two never share text. By default
evaluation is *Persuasion* (~467k characters, ~100k tokens for a GPT-2-style tokenizer) and
calibration the four largest of the other books (Mansfield Park, Emma, Pride and Prejudice, Sense and
Sensibility); *Northanger Abbey* is left out. One document per book. The corpus is fetched once
by ``make install`` (:mod:`lsa_framework.data.austen`) into :func:`lsa_framework.data.cache_dir`.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from lsa_framework.data import cache_dir
from lsa_framework.data.austen import BOOKS, books_path
from lsa_framework.errors import BadInputError
from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import PluginOptions

#: The books, largest first (characters after conversion).
BOOKS_BY_SIZE = (
    "mansfieldpark",
    "emma",
    "prideprejudice",
    "sensesensibility",
    "persuasion",
    "northangerabbey",
)
DEFAULT_EVALUATION = ("persuasion",)
CALIBRATION_BOOK_COUNT = 4


def _default_calibration(evaluation: list[str]) -> list[str]:
    return [book for book in BOOKS_BY_SIZE if book not in evaluation][:CALIBRATION_BOOK_COUNT]


def _as_list(value: Any) -> Any:
    """Book names in lower case; ``"emma,persuasion"`` (as a command-line option gives it) or a list."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, (list, tuple)):
        return [str(part).strip().lower() for part in value if str(part).strip()]
    return value


class AustenDataset:
    name: ClassVar[str] = "builtin"

    class Options(PluginOptions):
        """Which books calibrate and which evaluate; the two lists must not share a book."""

        calibration_books: list[str] = Field(
            default_factory=lambda: _default_calibration(list(DEFAULT_EVALUATION)),
            description="Books for calibration; default: the four largest books not used for evaluation.",
        )
        evaluation_books: list[str] = Field(
            default_factory=lambda: list(DEFAULT_EVALUATION),
            description=f"Books for evaluation (perplexity); any of {', '.join(BOOKS)}.",
        )

        @model_validator(mode="before")
        @classmethod
        def _calibration_default_avoids_evaluation(cls, data: Any) -> Any:
            if isinstance(data, dict) and "calibration_books" not in data and "evaluation_books" in data:
                evaluation = _as_list(data["evaluation_books"])
                if isinstance(evaluation, list):
                    data = {**data, "calibration_books": _default_calibration(evaluation)}
            return data

        @field_validator("calibration_books", "evaluation_books", mode="before")
        @classmethod
        def _split_text(cls, value: Any) -> Any:
            return _as_list(value)

        @field_validator("calibration_books", "evaluation_books")
        @classmethod
        def _known_books(cls, value: list[str]) -> list[str]:
            if not value:
                raise ValueError(f"name at least one book, out of {', '.join(BOOKS)}")
            for book in value:
                if book not in BOOKS:
                    close = difflib.get_close_matches(book, BOOKS, n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise ValueError(f"unknown book {book!r}; {hint}the books are {', '.join(BOOKS)}")
            return list(dict.fromkeys(value))

        @model_validator(mode="after")
        def _disjoint(self) -> AustenDataset.Options:
            shared = [book for book in self.calibration_books if book in self.evaluation_books]
            if shared:
                raise ValueError(f"calibration and evaluation books must differ, but both include {', '.join(shared)}")
            return self

    def __init__(self, options: Options | None = None, cache: Path | None = None) -> None:
        self.options = options if options is not None else self.Options()
        self.path = books_path(cache if cache is not None else cache_dir())
        self._books: dict[str, str] | None = None
        self._check_present()  # fail before a model is loaded, not after

    def _check_present(self) -> None:
        if not self.path.exists():
            raise BadInputError(
                f"The built-in Austen corpus is not in the cache ({self.path}); run `make install` "
                "(or `python -m lsa_framework.data.austen`) to fetch it, or pass --calibration FILE."
            )

    def _load(self) -> dict[str, str]:
        if self._books is None:
            self._check_present()
            try:
                books = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise BadInputError(
                    f"The built-in Austen corpus {self.path} cannot be read ({exc}); delete it and run "
                    "`python -m lsa_framework.data.austen` to fetch it again."
                ) from None
            if not isinstance(books, dict):
                raise BadInputError(
                    f"The built-in Austen corpus {self.path} is not a mapping of books; delete it and run "
                    "`python -m lsa_framework.data.austen` to fetch it again."
                )
            self._books = books
        return self._books

    def documents(self, split: str) -> list[str]:
        """One text per book of the split (``"calibration"`` or ``"evaluation"``)."""
        if split == "calibration":
            names = self.options.calibration_books
        elif split == "evaluation":
            names = self.options.evaluation_books
        else:
            raise ValueError(f"split must be 'calibration' or 'evaluation', not {split!r}")
        books = self._load()
        missing = [name for name in names if name not in books]
        if missing:
            raise BadInputError(
                f"The Austen corpus {self.path} lacks {', '.join(missing)}; delete it and run "
                "`python -m lsa_framework.data.austen` to fetch it again."
            )
        return [books[name] for name in names]


@hookimpl
def lsaf_register_datasets(register: Any) -> None:
    register(AustenDataset)

"""Datasets ``wikitext2`` and ``c4``: the standard sets of the pruning papers, from the Hugging Face hub.

    lsaf run --calibration c4            # needs network (or a filled Hugging Face cache)

As in the SparseGPT/Wanda data loaders: WikiText-2 (``wikitext``, ``wikitext-2-raw-v1``)
calibrates on the train split joined with spaces and evaluates on the test split joined with blank
lines (one document each). C4 (``allenai/c4``) calibrates on the documents of the first train shard
and evaluates on the first ``eval_documents`` (1100) documents of the first validation shard joined
with spaces, as the references' ``get_c4`` does. ``datasets`` is imported only when text is needed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import urlparse

from pydantic import Field

from lsa_framework.errors import BadInputError
from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import PluginOptions

C4_FILES = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
}


def _unreachable(name: str) -> BadInputError:
    return BadInputError(
        f"Could not load {name} from the Hugging Face hub (no network?); use --calibration builtin or a local file."
    )


def _check_split(split: str) -> None:
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be 'calibration' or 'evaluation', not {split!r}")


def _hub_resolves() -> bool:
    """Whether the hub's host name resolves: without it, every request would only retry and fail."""
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


@contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face offline mode for one call: a cached copy still loads, a missing one fails at once."""
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _load_texts(name: str, *args: Any, **kwargs: Any) -> list[str]:
    """``load_dataset(*args, **kwargs)["text"]``, with any failure to reach the data as one sentence.

    When the hub's name does not resolve (no network), only the local Hugging Face cache is tried,
    instead of a minute of retries.
    """
    try:
        import datasets

        if _hub_resolves():
            dataset = datasets.load_dataset(*args, **kwargs)
        else:
            with _offline():
                dataset = datasets.load_dataset(*args, **kwargs)
        return list(dataset["text"])
    except Exception as exc:  # network, hub, cache and format errors all mean the same to the user
        raise _unreachable(name) from exc


class _HubDataset:
    """A hub dataset loaded once per split and kept; subclasses say how a split is fetched."""

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: Any = None) -> None:
        self.options: Any = options if options is not None else self.Options()
        self._cache: dict[str, list[str]] = {}

    def documents(self, split: str) -> list[str]:
        _check_split(split)
        if split not in self._cache:
            self._cache[split] = self._load(split)
        return self._cache[split]

    def _load(self, split: str) -> list[str]:
        raise NotImplementedError


class WikiText2Dataset(_HubDataset):
    """Calibration: the train split joined with spaces; evaluation: the test split, blank-line joined
    (as the Wanda and SparseGPT scripts evaluate)."""

    name = "wikitext2"

    def _load(self, split: str) -> list[str]:
        hub_split, separator = ("train", " ") if split == "calibration" else ("test", "\n\n")
        return [separator.join(_load_texts(self.name, "wikitext", "wikitext-2-raw-v1", split=hub_split))]


class C4Options(PluginOptions):
    """The first shards of allenai/c4 (English)."""

    eval_documents: int = Field(default=1100, gt=0, description="Validation documents joined into the evaluation text.")


class C4Dataset(_HubDataset):
    """Calibration: the train shard's documents; evaluation: the first validation documents, joined."""

    name = "c4"
    Options = C4Options

    def _load(self, split: str) -> list[str]:
        hub_split = "train" if split == "calibration" else "validation"
        texts = _load_texts(self.name, "allenai/c4", data_files={hub_split: C4_FILES[hub_split]}, split=hub_split)
        if split == "calibration":
            return texts
        return [" ".join(texts[: self.options.eval_documents])]


@hookimpl
def lsaf_register_datasets(register: Any) -> None:
    register(WikiText2Dataset)
    register(C4Dataset)

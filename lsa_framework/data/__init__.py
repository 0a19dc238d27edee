"""Calibration and evaluation text: the offline Austen corpus, local files and Hugging Face datasets.

Each source is a dataset plugin (``documents(split) -> list[str]``); :mod:`lsa_framework.data.windows`
turns documents into token windows for calibration and one token stream for perplexity.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where fetched and converted assets live: ``$LSAF_CACHE``, else ``~/.cache/lsa_framework``."""
    env = os.environ.get("LSAF_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lsa_framework"

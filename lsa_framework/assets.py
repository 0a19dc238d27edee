"""Fetch and convert the offline assets once: the default corpus and every offline model alias.

    python -m lsa_framework.assets      # run by `make install`

All land in the cache folder (``$LSAF_CACHE`` or ``~/.cache/lsa_framework``); later runs load
the converted copies in about a second.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from lsa_framework.data import cache_dir
from lsa_framework.data.austen import fetch_austen
from lsa_framework.errors import LsafError
from lsa_framework.model.offline import OFFLINE_MODELS, offline_model_dir


def main() -> int:
    fetches: list[tuple[str, Callable[[], Path]]] = [("corpus", lambda: fetch_austen(cache_dir()))]
    fetches += [(f"model {alias}", partial(offline_model_dir, alias)) for alias in OFFLINE_MODELS]
    try:
        for label, fetch in fetches:
            start = time.perf_counter()
            path = fetch()
            print(f"{label}: {path} ({time.perf_counter() - start:.1f} s)")
    except LsafError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

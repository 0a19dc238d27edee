"""A model's identity: a content hash of its weight files, computed once and remembered.

    run.json "model_sha256", the resume state, bench cells and the masks export all record it.

Hashing reads every weight file (about 2 s for the 540 MB default model); the digest is cached in
lsaf's cache keyed by each file's path, size, modification time and inode, so later runs only
``stat`` the files. Replacing the weights (even by others of the same shape) changes the
modification time, so the digest is recomputed and differs. The config is hashed with the weights
(it changes what the weights mean).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
EXTRA_FILES = ("config.json",)
_CACHE_NAME = "identity.json"


def _files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    found = [p for p in source.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in EXTRA_FILES)]
    return sorted(found, key=lambda p: p.name)


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _cache_path() -> Path:
    from lsa_framework.data import cache_dir

    return cache_dir() / _CACHE_NAME


def _load_cache() -> dict[str, str]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store_cache(cache: dict[str, str]) -> None:
    from lsa_framework.storage.atomic import make_folder, write_json

    try:
        make_folder(_cache_path().parent)
        write_json(_cache_path(), cache)
    except OSError:
        pass  # a read-only cache only costs a rehash next time


def model_digest(source: Path) -> str:
    """sha256 over the names and digests of ``source``'s weight files (a folder or one file)."""
    cache = _load_cache()
    changed = False
    total = hashlib.sha256()
    for path in _files(source):
        key = _stat_key(path)
        digest = cache.get(key)
        if digest is None:
            digest = _file_digest(path)
            cache[key] = digest
            changed = True
        total.update(f"{path.name}:{digest}\n".encode())
    if changed:
        live = {k: v for k, v in cache.items() if os.path.exists(k.split("|", 1)[0])}
        _store_cache(live)
    return total.hexdigest()

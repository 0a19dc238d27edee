"""Atomic files and folders: written under a temporary sibling name, then renamed into place.

A reader (or an interrupted run) sees either the old content or the new, never half of it. Temporary
names carry lsaf's tag and the writer's pid (``.NAME.lsaf-tmp-PID-XXXX``), so leftovers of a killed
writer can be told from anything else and removed by the next run, and nothing else ever is.
Files and folders get the permissions the user's umask gives (``mkstemp``/``mkdtemp`` would make
them private).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lsa_framework.errors import LsafError

TEMP_TAG = "lsaf-tmp"
OLD_TAG = "lsaf-old"


class DiskFullError(LsafError):
    """The disk filled up while lsaf was writing; what was already saved stays resumable."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_umask()


def folder_mode() -> int:
    return 0o777 & ~_umask()


def temporary_sibling(target: Path, tag: str = TEMP_TAG) -> Path:
    """A fresh name beside ``target`` that only lsaf uses: ``.NAME.TAG-PID-RANDOM``."""
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, also when a library (safetensors) reports it only in its message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "os error 28" in text or "No space left on device" in text


def disk_full(path: Path, exc: BaseException, resumable: bool = False) -> DiskFullError:
    hint = " with --resume" if resumable else ""
    return DiskFullError(f"The disk is full while writing {path}; free some space and rerun{hint}.")


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` writes the content to a temporary sibling, which then replaces ``path``."""
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda tmp: _write_text(tmp, text))


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


def make_folder(path: Path) -> None:
    """``mkdir -p`` with the umask's permissions."""
    path.mkdir(parents=True, exist_ok=True, mode=folder_mode())


@contextmanager
def staged_folder(target: Path, finish: Callable[[Path], None], replace: Callable[[Path], None]) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target``; on success ``finish(tmp)`` (writes the marker,
    last) and rename it into place. An existing ``target`` is first checked by ``replace(target)``
    (which raises if it may not be replaced), moved aside, and removed only once the new folder is in
    place. On any failure the temporary folder is removed and ``target`` is untouched."""
    make_folder(target.parent)
    tmp = temporary_sibling(target)
    tmp.mkdir(mode=folder_mode())
    os.chmod(tmp, folder_mode())  # mkdir's mode is masked once more; set it exactly
    old: Path | None = None
    try:
        yield tmp
        finish(tmp)
        if target.exists() or target.is_symlink():
            replace(target)
            old = temporary_sibling(target, OLD_TAG)
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)  # put the previous output back
            old = None
        if is_disk_full(exc):
            raise disk_full(target, exc) from exc
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # the replaced folder: checked by replace() above


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove what killed lsaf writers left beside ``target`` (names ``.NAME.lsaf-tmp-PID-X`` and
    ``.NAME.lsaf-old-PID-X`` whose PID is no longer running); returns what was removed."""
    parent = target.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:{TEMP_TAG}|{OLD_TAG})-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed

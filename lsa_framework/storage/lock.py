"""One lsaf process per output folder: an exclusive lock taken before any work.

Two runs writing to the same ``--output`` would both work to the end and then race for the rename;
the second is refused at once instead, naming the first one's pid. The lock files live in lsaf's
cache (``locks/``), keyed by the output's absolute path, so nothing is created beside the output
before the run succeeds, and they are never deleted (deleting a lock file reopens a race).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lsa_framework.errors import BadInputError


def _lock_file(target: Path) -> Path:
    from lsa_framework.data import cache_dir

    digest = hashlib.sha256(str(target).encode()).hexdigest()[:24]
    folder = cache_dir() / "locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        import tempfile

        folder = Path(tempfile.gettempdir()) / "lsaf-locks"
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{digest}.lock"


@contextmanager
def output_lock(target: Path, flag: str = "--output") -> Iterator[None]:
    """Hold the lock of the resolved output path ``target`` inside the block."""
    path = _lock_file(target)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise BadInputError(
                f"Another lsaf process (pid {holder}) is writing {flag} {target}; wait for it to finish or choose "
                f"another {flag}."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

"""What an output folder may be, and when lsaf may replace one.

    lsaf run ... --output out/lsa-70 --overwrite

A folder lsaf writes ends with a marker, ``.lsaf.json``, written last, naming the kind of output
(``run``, ``eval``, ``bench``, ``apply``, ``recover``) and every entry lsaf put in it. ``--overwrite``
replaces a folder only when its marker says lsaf wrote it, for the same kind of output, and it holds
nothing else. Whatever the flags, an output may never be (or contain) the filesystem root, the home
directory, the current directory, lsaf's cache, or the model being read; all of this is checked
before any work, and again right before the old folder is replaced.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lsa_framework.errors import BadInputError

MARKER = ".lsaf.json"
WRITTEN_BY = "lsa_framework"
#: What run outputs of lsaf versions before the marker held (recognised by their run.json).
LEGACY_RUN_ENTRIES = frozenset({"model", "run.json", "report.md", "sparsity_profile.png"})
#: What bench folders of lsaf versions before the marker held (recognised by their results.json).
LEGACY_BENCH_ENTRIES = frozenset({"results.json", "scores.json", "results.csv", "results.md", "*.png"})


@dataclass(frozen=True)
class Marker:
    kind: str
    entries: frozenset[str]  # names, or glob patterns for what an incrementally written folder adds later

    def owns(self, name: str) -> bool:
        return name == MARKER or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.entries)


@dataclass(frozen=True)
class Protected:
    """A path no output may be, lie inside, or contain."""

    path: Path
    what: str  # e.g. "the model being pruned"
    #: True for folders an output may lie inside (home, current directory) but not be or contain.
    may_nest: bool = False


def write_marker(folder: Path, kind: str, extra: Iterable[str] = ()) -> None:
    """Record ``folder``'s current entries (and the ``extra`` names or glob patterns of what lsaf will add
    later) as lsaf's own; call it last."""
    from lsa_framework import __version__
    from lsa_framework.storage.atomic import write_json

    entries = sorted({p.name for p in folder.iterdir() if p.name != MARKER} | set(extra))
    write_json(folder / MARKER, {"written_by": WRITTEN_BY, "version": __version__, "kind": kind, "entries": entries})


def read_marker(folder: Path) -> Marker | None:
    """The marker of an lsaf folder, or None when lsaf did not (recognisably) write it."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        if data.get("written_by") == WRITTEN_BY and isinstance(data.get("entries"), list):
            return Marker(str(data.get("kind")), frozenset(str(e) for e in data["entries"]))
    except (OSError, ValueError, AttributeError):
        pass
    try:  # a run output of an lsaf version that wrote no marker
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        if isinstance(run, dict) and "lsa_framework" in (run.get("versions") or {}):
            return Marker("run", LEGACY_RUN_ENTRIES)
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    try:  # a bench folder of an lsaf version that wrote no marker
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        cells = results.get("cells") if isinstance(results, dict) else None
        if isinstance(cells, list) and all(isinstance(c, dict) and "method" in c for c in cells):
            return Marker("bench", LEGACY_BENCH_ENTRIES)
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return None


def resolve(path: Path, flag: str = "--output") -> Path:
    """The absolute, symlink-free path; one sentence for a symlink loop or an empty name."""
    if str(path) in ("", "."):
        raise BadInputError(f"{flag} is the current directory; name a new folder, e.g. {flag} out/run1.")
    try:
        return path.expanduser().resolve()
    except (RuntimeError, OSError) as exc:
        raise BadInputError(f"{flag} {path} cannot be resolved ({exc}); it is probably a symlink loop.") from None


def always_protected() -> list[Protected]:
    from lsa_framework.data import cache_dir

    found = [Protected(Path("/"), "the filesystem root", may_nest=True)]
    for path, what in ((Path.home(), "your home directory"), (Path.cwd(), "the current directory")):
        with contextlib.suppress(OSError, RuntimeError):
            found.append(Protected(path.resolve(), what, may_nest=True))
    with contextlib.suppress(OSError, RuntimeError):
        found.append(Protected(cache_dir().resolve(), "lsaf's cache"))
    return found


def check_protected(target: Path, protected: Iterable[Protected], flag: str = "--output") -> None:
    for item in protected:
        inside = item.path in target.parents
        if target == item.path or target in item.path.parents or (inside and not item.may_nest):
            relation = "is" if target == item.path else ("contains" if target in item.path.parents else "is inside")
            raise BadInputError(
                f"{flag} {target} {relation} {item.what} ({item.path}), which lsaf never writes into or replaces; "
                f"choose a new folder for {flag}."
            )


def check_replaceable(target: Path, kind: str, flag: str = "--output") -> None:
    """Raise unless the existing folder ``target`` is lsaf's own ``kind`` output and holds nothing else."""
    marker = read_marker(target)
    if marker is None:
        raise BadInputError(
            f"{flag} {target} is a folder lsaf did not write (it has no {MARKER}); lsaf replaces only its own "
            f"outputs, so choose another {flag} or empty that folder yourself."
        )
    if marker.kind != kind:
        raise BadInputError(
            f"{flag} {target} holds an lsaf {marker.kind} output, not a {kind} output; choose another {flag}."
        )
    foreign = sorted(p.name for p in target.iterdir() if not marker.owns(p.name))
    if foreign:
        raise BadInputError(
            f"{flag} {target} holds {foreign[0]!r}, which lsaf did not write; move it out of the folder or "
            f"choose another {flag}."
        )


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(target: Path, flag: str = "--output") -> None:
    """Fail now, not after an hour of work, when the folder that will receive the output is not writable."""
    where = _nearest_existing(target.parent)
    if not where.is_dir():
        raise BadInputError(f"The parent of {flag} {target} is a file ({where}); choose another {flag}.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lsaf-write-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInputError(
            f"Cannot write into {where} ({exc.strerror or exc}); choose an {flag} in a writable folder."
        ) from None


def check_output(
    path: Path, *, kind: str, overwrite: bool, protected: Sequence[Protected] = (), flag: str = "--output"
) -> Path:
    """Check, before any work, that ``path`` can receive a ``kind`` output; returns the resolved path."""
    target = resolve(path, flag)
    check_protected(target, [*always_protected(), *protected], flag)
    if target.exists() and not target.is_dir():
        raise BadInputError(f"{flag} {target} is a file; pass a folder path to {flag}.")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise BadInputError(
                f"{flag} {target} already exists; pass --overwrite to replace it (lsaf replaces only folders it "
                f"wrote) or choose another {flag}."
            )
        check_replaceable(target, kind, flag)
    check_writable(target, flag)
    return target

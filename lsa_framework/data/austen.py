"""Fetch the offline default corpus, Jane Austen's six novels, and convert it once into the cache.

    python -m lsa_framework.data.austen [CACHE_DIR] [--deb FILE]

The novels come from Debian's ``r-cran-janeaustenr`` (public domain; the R package stores each
book as a character vector, one line per element). We take the ``.deb`` alone with
``apt-get download`` (none of its R dependencies), unpack it with ``dpkg-deb -x`` (or a small ``ar``
reader where dpkg is missing) and read R's lazy-load database ``data/Rdata.rdx``/``Rdata.rdb``:
the ``.rdx`` is a gzip'd serialized list whose ``variables`` maps each object name to an
(offset, length) in the ``.rdb``; each ``.rdb`` chunk is a 4-byte big-endian length followed by the
zlib-compressed serialization of one object. The lines of each book are joined into paragraphs
(a blank line ends a paragraph) and the result, ``{book: text}``, is written to
``CACHE_DIR/austen/books.json``. No text of the books is part of this repository.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lsa_framework.errors import LsafError

PACKAGE = "r-cran-janeaustenr"
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"
BOOKS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
MANUAL_DOWNLOAD = f"https://packages.debian.org/stable/all/{PACKAGE}/download"


def books_path(cache_dir: Path) -> Path:
    """Where the converted corpus lives under ``cache_dir``."""
    return Path(cache_dir) / "austen" / "books.json"


def fetch_austen(cache_dir: Path, deb: Path | None = None) -> Path:
    """Return ``cache_dir/austen/books.json``, downloading and converting the corpus if it is missing.

    ``deb``: an already downloaded ``r-cran-janeaustenr`` package to convert instead of calling apt-get.
    """
    target = books_path(cache_dir)
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="lsaf-austen-") as tmp:
        package = Path(deb) if deb is not None else _apt_download(Path(tmp))
        if not package.is_file():
            raise LsafError(f"The package file {package} does not exist; pass the path of the downloaded .deb.")
        rdx, rdb = _read_lazyload_files(package, Path(tmp) / "unpacked")
    books = {name: paragraphs(lines) for name, lines in read_lazyload(rdx, rdb).items()}
    if not books:
        raise LsafError(f"The package {package.name} holds no books; fetch {PACKAGE} again or report the problem.")
    _write_json_atomically(target, books)
    return target


# --- download and unpack -------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)


def _apt_download(workdir: Path) -> Path:
    """Download the package's .deb into ``workdir`` with apt-get (updating empty package lists once)."""
    by_hand = (
        f"run `apt-get update && apt-get download {PACKAGE}` (or download the .deb from {MANUAL_DOWNLOAD}) "
        "and then `python -m lsa_framework.data.austen --deb FILE`"
    )
    if shutil.which("apt-get") is None:
        raise LsafError(f"apt-get is not available to fetch the Austen corpus; on a Debian/Ubuntu machine {by_hand}.")
    result = _run(["apt-get", "download", PACKAGE], workdir)
    if result.returncode != 0:
        # A fresh machine's package lists are empty: update them once and try again.
        _run(["apt-get", "update"], workdir)
        result = _run(["apt-get", "download", PACKAGE], workdir)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        detail = (result.stderr or result.stdout).strip().splitlines()
        last = f" (apt-get said: {detail[-1]})" if detail else ""
        raise LsafError(f"apt-get could not download {PACKAGE}{last}; {by_hand}.")
    return debs[-1]


def _read_lazyload_files(deb: Path, workdir: Path) -> tuple[bytes, bytes]:
    """The bytes of ``Rdata.rdx`` and ``Rdata.rdb`` inside the .deb."""
    if shutil.which("dpkg-deb") is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        result = _run(["dpkg-deb", "-x", str(deb), str(workdir)], workdir)
        if result.returncode != 0:
            raise LsafError(
                f"dpkg-deb could not unpack {deb.name} ({result.stderr.strip()}); delete it and fetch {PACKAGE} again."
            )
        data = workdir / DATA_DIR
        try:
            return (data / "Rdata.rdx").read_bytes(), (data / "Rdata.rdb").read_bytes()
        except FileNotFoundError:
            raise LsafError(
                f"{deb.name} has no {DATA_DIR}/Rdata.rdx; it is not the {PACKAGE} package this loader knows."
            ) from None
    return _read_from_deb_archive(deb.read_bytes())


def _read_from_deb_archive(deb: bytes) -> tuple[bytes, bytes]:
    """Read the two lazy-load files out of a .deb (an ``ar`` archive holding ``data.tar.*``)."""
    if not deb.startswith(b"!<arch>\n"):
        raise LsafError("The package file is not a Debian .deb archive; download it again.")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if not name.startswith("data.tar"):
            continue
        try:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                files = {}
                for member in tar.getmembers():
                    path = member.name.lstrip("./")
                    if path in (f"{DATA_DIR}/Rdata.rdx", f"{DATA_DIR}/Rdata.rdb"):
                        handle = tar.extractfile(member)
                        if handle is not None:
                            files[path.rsplit("/", 1)[1]] = handle.read()
        except tarfile.TarError as exc:
            raise LsafError(
                f"Could not read {name} inside the package ({exc}); install dpkg-deb or download the .deb again."
            ) from None
        if len(files) == 2:
            return files["Rdata.rdx"], files["Rdata.rdb"]
        break
    raise LsafError(f"The package has no {DATA_DIR}/Rdata.rdx; it is not the {PACKAGE} package this loader knows.")


# --- R lazy-load database ------------------------------------------------------------------------------


def _unserialize(data: bytes) -> Any:
    import rdata

    return rdata.conversion.convert(rdata.parser.parse_data(data, extension=".rds"))


def _decompress_chunk(chunk: bytes, compressed: int) -> bytes:
    """One ``.rdb`` entry: 4-byte length, then (for bzip2/xz databases) a type byte, then the payload."""
    if compressed in (2, 3):
        kind, payload = chunk[4:5], chunk[5:]
        if kind == b"0":
            return payload
        if kind == b"2":
            return bz2.decompress(payload)
        if kind == b"X":
            return lzma.decompress(payload)
        return zlib.decompress(payload)
    return zlib.decompress(chunk[4:])


def read_lazyload(rdx: bytes, rdb: bytes) -> dict[str, list[str]]:
    """The character vectors stored in an R lazy-load database, as ``{name: lines}``."""
    index_bytes = gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else zlib.decompress(rdx[4:])
    index = _unserialize(index_bytes)
    compressed_flag = index.get("compressed", True)
    compressed = int(compressed_flag[0] if hasattr(compressed_flag, "__len__") else compressed_flag)
    books: dict[str, list[str]] = {}
    for name, (offset, length) in index["variables"].items():
        chunk = rdb[int(offset) : int(offset) + int(length)]
        value = _unserialize(_decompress_chunk(chunk, compressed))
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, list) and all(v is None or isinstance(v, str) for v in value):
            books[str(name)] = [v if isinstance(v, str) else "" for v in value]
    return books


def paragraphs(lines: Iterable[str]) -> str:
    """Join lines into paragraphs: a blank line ends one; lines inside one are joined with a space."""
    result: list[str] = []
    current: list[str] = []
    for line in lines:
        text = line.strip()
        if text:
            current.append(text)
        elif current:
            result.append(" ".join(current))
            current = []
    if current:
        result.append(" ".join(current))
    return "\n\n".join(result)


def _write_json_atomically(target: Path, books: Mapping[str, str]) -> None:
    from lsa_framework.storage.atomic import make_folder, write_text

    make_folder(target.parent)
    write_text(target, json.dumps(dict(books), ensure_ascii=False))


def main(argv: list[str] | None = None) -> int:
    import argparse

    from lsa_framework.data import cache_dir

    parser = argparse.ArgumentParser(
        prog="python -m lsa_framework.data.austen",
        description="Fetch Jane Austen's novels (Debian r-cran-janeaustenr) and convert them into the cache.",
    )
    parser.add_argument(
        "cache_dir", nargs="?", type=Path, default=None, help="default: $LSAF_CACHE or ~/.cache/lsa_framework"
    )
    parser.add_argument("--deb", type=Path, default=None, help="an already downloaded r-cran-janeaustenr .deb")
    args = parser.parse_args(argv)
    try:
        path = fetch_austen(args.cache_dir if args.cache_dir is not None else cache_dir(), deb=args.deb)
    except LsafError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

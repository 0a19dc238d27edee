"""Size of the engine at two commits: lines per file and the longest function, read from git.

    .venv/bin/python benchmarks/engine_size.py 5a0ebb0 30b74df

Counts the physical lines of ``lsa_framework/engine/``, ``lsa_framework/bench/``, ``lsa_framework/cli.py``
and ``lsa_framework/cli_options.py`` as committed (no checkout needed), and finds the longest function
or method with :mod:`ast` (from its ``def`` line to its last line, decorators excluded).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsa_framework.report.tables import markdown_table

PATHS = ("lsa_framework/engine", "lsa_framework/bench", "lsa_framework/cli.py", "lsa_framework/cli_options.py")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def python_files(commit: str) -> list[str]:
    return [p for p in git("ls-tree", "-r", "--name-only", commit, "--", *PATHS).split() if p.endswith(".py")]


def functions(source: str) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method, nested ones included."""
    found: list[tuple[str, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                found.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(ast.parse(source), "")
    return found


def measure(commit: str, top: int) -> dict[str, Any]:
    per_file: dict[str, int] = {}
    every: list[tuple[str, str, int]] = []
    for path in python_files(commit):
        source = git("show", f"{commit}:{path}")
        per_file[path] = len(source.splitlines())
        every += [(path, name, length) for name, length in functions(source)]
    longest = sorted(every, key=lambda f: f[2], reverse=True)[:top]
    return {"commit": commit, "files": per_file, "total": sum(per_file.values()), "longest": longest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commits", nargs="+", help="git commits to compare (e.g. before after)")
    parser.add_argument("--top", type=int, default=3, help="longest functions listed per commit")
    args = parser.parse_args(argv)
    results = [measure(commit, args.top) for commit in args.commits]
    rows = [[r["commit"], len(r["files"]), r["total"]] for r in results]
    print(markdown_table(["commit", "files", "lines"], rows, "lrr"))
    for r in results:
        print(f"\n{r['commit']}, longest functions:\n")
        print(markdown_table(["file", "function", "lines"], r["longest"], "llr"))
        print(f"\n{r['commit']}, lines per file:\n")
        print(markdown_table(["file", "lines"], sorted(r["files"].items()), "lr"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

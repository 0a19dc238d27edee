"""The CLI's progress display: each pass's bar is printed once, when it ends, in a log as on a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from lsa_framework import cli


def test_each_pass_bar_is_printed_once(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, force_terminal=False, width=100))
    observer = cli._RichObserver(quiet=False)
    for name in ("scoring", "pruning"):
        observer.start_pass(name, 3)
        for _ in range(3):
            observer.advance()
        observer.end_pass()
    text = out.getvalue()
    assert text.count("scoring") == 1 and text.count("pruning") == 1, text
    assert text.count("3/3") == 2

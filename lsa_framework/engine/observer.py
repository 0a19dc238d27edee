"""Progress and measurement of the stages: what the CLI shows, and what run.json records per stage."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Observer:
    """Progress callbacks the CLI overrides; the base class does nothing."""

    def start_pass(self, name: str, total: int) -> None:
        """A pass over ``total`` decoder layers begins."""

    def advance(self) -> None:
        """One more layer of the current pass is done."""

    def end_pass(self) -> None:
        """The current pass is over."""

    def message(self, text: str) -> None:
        """A short status line."""


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@contextmanager
def stage(result: Any, name: str) -> Iterator[None]:
    """Record a stage's wall time, its CPU time (all threads of the process: robust to other work on
    the machine) and the peak resident memory at its end into ``result``.

    Times of a stage entered twice (a bench cell) add up.
    """
    start, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        result.timings[name] = round(result.timings.get(name, 0.0) + time.perf_counter() - start, 3)
        result.cpu_s[name] = round(result.cpu_s.get(name, 0.0) + time.process_time() - cpu, 3)
        result.peak_rss_mb[name] = peak_rss_mb()

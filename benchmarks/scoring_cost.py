"""Cost of each scorer's dense scoring pass relative to one plain dense forward, in one process.

    .venv/bin/python benchmarks/scoring_cost.py --nsamples 16 --seqlen 512

Prints a Markdown table: seconds of the scoring pass (statistics + scores for one allocator's units,
:meth:`Session.score`) and its ratio to one forward of the whole model over the same calibration
windows, measured in the same run so that machine noise affects both alike; then every job again in
ONE shared pass, as ``lsaf bench`` scores them.
"""

from __future__ import annotations

import argparse
import time

import torch

from lsa_framework.config import build_config
from lsa_framework.engine.observer import Observer
from lsa_framework.engine.plugins import resolve, resolve_dataset
from lsa_framework.engine.session import ScoringJob, Session
from lsa_framework.report.tables import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--scorers", default="uniform,owl,dlp,lse")
    parser.add_argument("--allocators", default="layer,block,projection")
    args = parser.parse_args()

    config = build_config(
        {"model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen, "threads": args.threads}
    )
    session = Session(config, resolve_dataset(config), Observer())
    session.load()
    session.calibrate()
    assert session.layout is not None and session.input_ids is not None

    started = time.perf_counter()
    with torch.no_grad():
        for batch in session.input_ids.split(config.batch_size):
            session.model(input_ids=batch, use_cache=False)
    dense = time.perf_counter() - started
    print(f"one dense forward over {args.nsamples}x{args.seqlen} tokens: {dense:.1f} s\n")

    scorers = {name: resolve("scorers", name, {}) for name in args.scorers.split(",")}  # one instance per name
    jobs = [
        ScoringJob(f"{name}/{allocator}", scorer, resolve("allocators", allocator, {}).units(session.layout))
        for name, scorer in scorers.items()
        for allocator in args.allocators.split(",")
    ]
    rows = []
    for job in jobs:
        started = time.perf_counter()
        session.score([job])
        seconds = time.perf_counter() - started
        rows.append([*job.key.split("/"), seconds, seconds / dense])
    headers = ["scorer", "allocator", "scoring pass alone (s)", "ratio to one dense forward"]
    print(markdown_table(headers, rows, "llrr", digits=2))
    alone = sum(row[2] for row in rows)
    started = time.perf_counter()
    session.score(jobs)  # lsaf bench's way: every job in one dense pass
    shared = time.perf_counter() - started
    print(
        f"\nall {len(jobs)} jobs one by one: {alone:.1f} s; in one shared pass (lsaf bench): {shared:.1f} s "
        f"({alone / shared:.1f}x less)"
    )


if __name__ == "__main__":
    main()

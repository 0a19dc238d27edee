"""Wall time of each allocator relative to one dense forward (issue 16): the scoring pass of every
scorer alone, the ``rd`` curves on top of the pass that gathers their statistics, and an ``evo`` search.

    OMP_NUM_THREADS=1 python benchmarks/allocation_cost.py --nsamples 16 --seqlen 512 --out benchmarks/results

"One dense forward" is the model's own forward over the calibration windows (the batches the engine
uses), which is what a scoring pass costs at least. Each scorer is timed in its own session pass (as
``lsaf run`` would run it); ``rd (pass only)`` is a stand-in scorer with rd's statistics and no work, so
``rd`` minus it is the cost of the error curves themselves. The machine's load changes absolute
seconds; the ratios, measured in one process one after the other, are what counts.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from lsa_framework.config import build_config
from lsa_framework.engine.observer import Observer
from lsa_framework.engine.plugins import resolve_plugins
from lsa_framework.engine.session import KeptStats, ScoringJob, Session
from lsa_framework.scorers.rd import RdScorer
from lsa_framework.storage.atomic import write_text
from lsa_framework.types import LinearStats, Scores, Unit


class PassOnly:
    """A scorer with rd's statistics and no work: the cost of the pass that gathers them."""

    name: ClassVar[str] = "rd-pass-only"
    needs: ClassVar[frozenset[str]] = RdScorer.needs

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> float:
        return 0.0

    def finish(self, values: Mapping[str, Any], target: float, granularity: str) -> Scores:
        return Scores(dict(values), True, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--evo-generations", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = {"model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen, "sparsity": args.sparsity,
            "threads": 1, "eval": []}  # fmt: skip
    config = build_config({**base, "scorer": "uniform"})
    plugins = resolve_plugins(config)
    session = Session(config, plugins.dataset, Observer())
    session.load()
    session.calibrate()
    layout = session.layout
    assert layout is not None and session.input_ids is not None

    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, session.input_ids.shape[0], config.batch_size):
            session.model(input_ids=session.input_ids[i : i + config.batch_size], use_cache=False)
    forward = time.perf_counter() - started
    rows: list[dict[str, Any]] = []

    def timed(label: str, allocator: str, scorer: Any) -> None:
        RdScorer._curves.clear()  # each measurement computes its own curves
        units = resolve_plugins(build_config({**base, "allocator": allocator})).allocator.units(layout)
        tick = time.perf_counter()
        session.score([ScoringJob(label, scorer, units)])
        seconds = time.perf_counter() - tick
        rows.append({"scorer": label, "allocator": allocator, "seconds": round(seconds, 2),
                     "ratio": round(seconds / forward, 3)})  # fmt: skip
        print(rows[-1], flush=True)

    timed("rd (pass only)", "layer", plugins.scorer.__class__(plugins.scorer.kind, "rd-pass-only", "bench", PassOnly()))
    for allocator in ("layer", "block", "projection"):
        timed("rd", allocator, resolve_plugins(build_config({**base, "scorer": "rd"})).scorer)
    for scorer in ("dlp", "lse"):
        timed(scorer, "layer", resolve_plugins(build_config({**base, "scorer": scorer})).scorer)

    evo_options = {"generations": args.evo_generations}
    evo_config = build_config({**base, "scorer": "evo", "allocator": "layer", "scorer_opts": evo_options})
    evo = resolve_plugins(evo_config)
    units = evo.allocator.units(layout)
    session.search_stats = KeptStats(evo.pruner.needs)  # the search's dense statistics, from the same pass
    values = session.score([ScoringJob("evo", evo.scorer, units)], session.search_stats)["evo"]
    allocation = session.allocate(evo.scorer, evo.allocator, units, values, evo_config)
    tick = time.perf_counter()
    searched = session.search(evo.scorer, evo.allocator, evo.pruner, allocation, evo_config)
    seconds = time.perf_counter() - tick
    record = searched.search or {}
    rows.append({"scorer": f"evo search ({args.evo_generations} generations, start {record.get('start')})",
                 "allocator": "layer", "seconds": round(seconds, 2), "ratio": round(seconds / forward, 3),
                 "fitness_tokens": record.get("fitness_tokens")})  # fmt: skip
    print(rows[-1], flush=True)

    stem = args.out / f"allocation_cost_{args.model}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    payload = {"forward_seconds": round(forward, 2), "windows": [args.nsamples, args.seqlen], "rows": rows}
    write_text(stem.with_suffix(".json"), json.dumps(payload, indent=1) + "\n")
    lines = [
        f"# Allocator cost on {args.model} ({args.nsamples} x {args.seqlen} calibration, 1 thread)",
        "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/allocation_cost.py --model {args.model} "
        f"--nsamples {args.nsamples} --seqlen {args.seqlen}`. One dense forward over the calibration "
        f"windows: {forward:.1f} s.",
        "",
        "| scorer | allocator | seconds | ratio to one dense forward |",
        "| --- | --- | ---: | ---: |",
        *[f"| {r['scorer']} | {r['allocator']} | {r['seconds']:.1f} | {r['ratio']:.2f} |" for r in rows],
        "",
    ]
    write_text(stem.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    main()

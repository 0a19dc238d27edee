"""Cost of each scorer's dense scoring pass relative to one plain dense forward, in one process.

    .venv/bin/python benchmarks/scoring_cost.py --nsamples 16 --seqlen 512

Prints a Markdown table: seconds of the scoring pass (statistics + scores for one allocator) and
its ratio to one forward of the whole model over the same calibration tokens, measured in the
same run so that machine noise affects both alike.
"""

from __future__ import annotations

import argparse
import time

import torch

from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import (
    Observer,
    ScoringJob,
    calibration_ids,
    resolve_plugins,
    score_jobs,
)
from lsa_framework.engine.sequential import capture_layer_inputs
from lsa_framework.model.layout import find_layout
from lsa_framework.model.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--scorers", default="uniform,owl,dlp,lse")
    parser.add_argument("--allocators", default="layer,block,projection")
    args = parser.parse_args()

    base = {"model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen}
    config = build_config({**base, "scorer": "uniform"})
    loaded = load_model(config.model, config.dtype)
    model, layout = loaded.model, find_layout(loaded.model)
    plugins = resolve_plugins(config)
    ids = calibration_ids(config, plugins.dataset, loaded.tokenizer, model)

    started = time.perf_counter()
    with torch.no_grad():
        for batch in ids.split(config.batch_size):
            model(input_ids=batch, use_cache=False)
    dense = time.perf_counter() - started

    def calibrate():  # type: ignore[no-untyped-def]
        return capture_layer_inputs(model, layout.layers[0], ids, config.batch_size)

    print(f"one dense forward over {args.nsamples}x{args.seqlen} tokens: {dense:.1f} s\n")
    print("| scorer | allocator | scoring pass alone (s) | ratio to one dense forward |")
    print("| --- | --- | ---: | ---: |")
    jobs = []
    alone = 0.0
    for name in args.scorers.split(","):
        for allocator in args.allocators.split(","):
            plugins = resolve_plugins(build_config({**base, "scorer": name, "allocator": allocator}))
            job = ScoringJob(f"{name}/{allocator}", plugins.scorer, plugins.allocator.call("units", layout))
            jobs.append(ScoringJob(job.key, resolve_plugins(build_config({**base, "scorer": name})).scorer, job.units))
            started = time.perf_counter()
            score_jobs([job], layout, calibrate, Observer())
            seconds = time.perf_counter() - started
            alone += seconds
            print(f"| {name} | {allocator} | {seconds:.1f} | {seconds / dense:.2f} |")
    # lsaf bench's way: one scorer instance per name, every job in one dense pass.
    shared_scorers = {}
    for job in jobs:
        shared_scorers.setdefault(job.key.split("/")[0], job.scorer)
    shared_jobs = [ScoringJob(j.key, shared_scorers[j.key.split("/")[0]], j.units) for j in jobs]
    started = time.perf_counter()
    score_jobs(shared_jobs, layout, calibrate, Observer())
    shared = time.perf_counter() - started
    print(
        f"\nall {len(jobs)} jobs one by one: {alone:.1f} s; in one shared pass (lsaf bench): {shared:.1f} s "
        f"({alone / shared:.1f}x less)"
    )


if __name__ == "__main__":
    main()

"""Per layer: the residual-stream energy and the gain of the norms that read o_proj / down_proj.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/post_norm_gain.py --model gemma3-270m --nsamples 4

Why it exists: ``rd`` divides each unit's error by the residual-stream energy E at the layer input,
because an output error "lands in the residual stream". In Gemma 2/3 it does not land there as it is:
a post-attention and a post-feedforward norm read what o_proj and down_proj return and rescale it. The
engine's ``output_gain`` statistic (Σ‖norm(y)‖²/Σ‖y‖², from the same scoring pass as rd, with the
run's calibration windows) measures that factor; this script writes it per layer next to E, so the size
of the correction can be seen. On a model without such norms (Llama) every gain is 1.

Results: ``benchmarks/results/post_norm_gain_<model>.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lsa_framework.config import build_config
from lsa_framework.engine.layer_calls import capture_activations
from lsa_framework.engine.observer import Observer
from lsa_framework.engine.passes import scoring_pass
from lsa_framework.engine.plugins import resolve_plugins
from lsa_framework.engine.session import Session
from lsa_framework.engine.statistics import statistic_classes
from lsa_framework.storage.atomic import write_text
from lsa_framework.types import LinearStats

NEEDS = frozenset({"output_gain", "residual_energy"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    config = build_config({"model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen, "eval": []})
    session = Session(config, resolve_plugins(config).dataset, Observer())
    session.load()
    session.calibrate()
    layout, ids = session.layout, session.input_ids
    assert layout is not None and ids is not None
    found: dict[int, dict[str, LinearStats]] = {}
    with torch.no_grad():
        acts = capture_activations(session.model, layout.stack, ids, config.batch_size, None)
        scoring_pass(layout, acts, NEEDS, found.__setitem__, classes=statistic_classes(NEEDS))
    lines = [
        f"# Output-norm gains of {args.model} ({args.nsamples} × {args.seqlen} calibration tokens)",
        "",
        "`benchmarks/post_norm_gain.py`. E: `residual_energy`, mean ‖h‖² entering the layer; the gains:",
        "`output_gain`, Σ‖norm(y)‖²/Σ‖y‖² of the norm reading the output y of the linear or its block (1: none).",
        "`rd` scales each linear's error by its gain before dividing by E.",
        "",
        "| layer | E | " + " | ".join(info.projection for info in layout.linears[0]) + " |",
        "| ---: | ---: | " + " | ".join("---:" for _ in layout.linears[0]) + " |",
    ]
    for index, linears in enumerate(layout.linears):
        stats = found[index]
        energy = float(stats[linears[0].name].require("residual_energy")[0])
        gains = [float(stats[info.name].require("output_gain")[0]) for info in linears]
        lines.append(f"| {index} | {energy:.4g} | " + " | ".join(f"{g:.3g}" for g in gains) + " |")
    target = args.out / f"post_norm_gain_{args.model}.md"
    write_text(target, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Weight dtypes on the CPU: perplexity and time of float32, bfloat16 and float16, dense and pruned.

    .venv/bin/python benchmarks/dtypes.py                     # default model, Wanda 50%, 16 × 256
    .venv/bin/python benchmarks/dtypes.py --eval-tokens 16384

Statistics are float32 whatever the weights' dtype (the engine casts before accumulating), so the
differences come from the forward passes and the stored weights. Each configuration runs in this
process one after the other; the model is reloaded for every run.

Results: ``benchmarks/results/dtypes_<model>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, machine_description

from lsa_framework.report.tables import markdown_table
from lsa_framework.storage.atomic import write_text

DTYPES = ("float32", "bfloat16", "float16")


def measure(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    from lsa_framework.config import build_config
    from lsa_framework.engine.pipeline import evaluate_model, run

    common = {
        "model": args.model,
        "dtype": dtype,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "threads": args.threads,
        "eval": ["perplexity"],
        "eval_opts": {"perplexity": {"max_tokens": args.eval_tokens}},
    }
    dense = evaluate_model(build_config(common))
    pruning = {"scorer": args.scorer, "pruner": args.pruner, "sparsity": args.sparsity, "eval_dense": False}
    pruned = run(build_config({**common, **pruning}))  # the dense model is evaluated above, uncached
    return {
        "dtype": dtype,
        "dense_ppl": dense.metrics["perplexity"],
        "dense_eval_s": round(dense.timings["evaluation"], 1),
        "pruned_ppl": pruned.metrics["perplexity"],
        "pruned_timings_s": pruned.timings,
        "mask_sha256": pruned.mask_hashes,
    }


def render(report: dict[str, Any]) -> str:
    rows = report["rows"]
    base = rows[0]
    setup = report["setup"]
    lines = [
        f"# Weight dtypes on the CPU: {setup['model']}",
        "",
        f"`{report['command']}`",
        "",
        f"Pruned: {setup['scorer']} + {setup['pruner']} at {setup['sparsity']}, calibration "
        f"{setup['nsamples']} × {setup['seqlen']}; perplexity on {setup['eval_tokens']} tokens of the evaluation "
        f"book. Machine: {report['machine']['nproc']} cores, torch threads {report['machine']['torch_threads']}.",
        "",
    ]
    headers = ["weights", "dense ppl", "Δ vs float32", "pruned ppl", "Δ vs float32", "masks = float32's"]
    table = []
    for row in rows:
        same = sum(row["mask_sha256"][k] == v for k, v in base["mask_sha256"].items())
        table.append([row["dtype"], f"{row['dense_ppl']:.3f}", f"{row['dense_ppl'] / base['dense_ppl'] - 1:+.2%}"])
        table[-1] += [f"{row['pruned_ppl']:.3f}", f"{row['pruned_ppl'] / base['pruned_ppl'] - 1:+.2%}"]
        table[-1] += [f"{same}/{len(base['mask_sha256'])}", row["pruned_timings_s"]["pruning"], row["dense_eval_s"]]
    lines.append(markdown_table([*headers, "pruning s", "dense eval s"], table, "l" + "r" * 7, digits=1))
    lines += ["", report.get("note", ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="float32 vs bfloat16 vs float16 weights on the CPU.")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--scorer", default="uniform")
    parser.add_argument("--pruner", default="wanda")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "command": "python benchmarks/dtypes.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "setup": {k: v for k, v in vars(args).items() if k not in ("out", "note")},
        "machine": machine_description(args.threads),
        "note": args.note,
        "rows": [],
    }
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        print(f"[dtypes] {dtype}", flush=True)
        report["rows"].append(measure(args, dtype))
    out = args.out if args.out is not None else RESULTS_DIR / f"dtypes_{Path(args.model).name}"
    write_text(out.with_name(out.name + ".json"), json.dumps(report, indent=2) + "\n")
    write_text(out.with_name(out.name + ".md"), render(report))
    print(render(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

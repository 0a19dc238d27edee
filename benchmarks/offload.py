"""Streaming benchmark: ``--offload disk`` against the in-memory run, peak memory and identical output.

    .venv/bin/python benchmarks/offload.py                       # synthetic ~1.2B Llama, in 1 GB shards
    .venv/bin/python benchmarks/offload.py --layers 4            # a shallower synthetic model
    .venv/bin/python benchmarks/offload.py --model smollm2-135m

For every pruner, the same run twice, each in its own process (so that its peak RSS is its own): with
the model in memory and with ``--offload disk``. Reported per run: wall time and peak RSS per stage,
and the peak RSS as a share of the model's size on disk (the target: below 40%). Asserted: identical
mask hashes and bit-identical saved weights, tensor by tensor.

Results: ``benchmarks/results/offload_<model>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, SYNTHETIC, base_config, machine_description, resolve_model
from speed import spawn

from lsa_framework.report.tables import markdown_table
from lsa_framework.storage.atomic import write_text

TARGET_RSS_SHARE = 0.40


def model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def parameter_count(folder: Path) -> int:
    """Numbers stored in the safetensors files (tied weights are stored once)."""
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                count = 1
                for size in f.get_slice(key).get_shape():
                    count *= size
                total += count
    return total


def saved_weights_identical(first: Path, second: Path) -> tuple[bool, int]:
    """Compare two saved models tensor by tensor, one tensor in memory at a time."""
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        keys: dict[str, Path] = {}
        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as f:
                keys.update(dict.fromkeys(f.keys(), file))
        return keys

    left, right = index(first), index(second)
    if set(left) != set(right):
        return False, 0
    for key in sorted(left):
        with safe_open(str(left[key]), framework="pt") as a, safe_open(str(right[key]), framework="pt") as b:
            x, y = a.get_tensor(key), b.get_tensor(key)
            if x.dtype != y.dtype or x.shape != y.shape or not bool((x == y).all()):
                return False, len(left)
    return True, len(left)


def run_once(args: argparse.Namespace, spec: str, pruner: str, offload: str, output: Path) -> dict[str, Any]:
    config = base_config(
        args, spec, pruner=pruner, scorer=args.scorer, offload=offload, output=str(output), overwrite=True
    )
    started = time.perf_counter()
    got = spawn("run", {"config": config.model_dump(mode="json")})["run"]
    return {
        "offload": offload,
        "timings_s": got["timings_s"],
        "peak_rss_by_stage": got["peak_rss_mb"],
        "peak_rss_mb": max(got["peak_rss_mb"].values()),
        "wall_s": round(time.perf_counter() - started, 1),
        "ppl": got["metrics"].get("perplexity"),
        "mask_sha256": got["mask_sha256"],
    }


def render(report: dict[str, Any]) -> str:
    size_mb = report["model_mb"]
    lines = [
        f"# Offload benchmark: {report['model']}",
        "",
        f"`{report['command']}`",
        "",
        f"Model: {report['parameters'] / 1e6:.0f}M parameters, {size_mb:.0f} MB of safetensors in "
        f"{report['shards']} shard(s). Calibration {report['nsamples']} × {report['seqlen']}, "
        f"scorer {report['scorer']}, sparsity {report['sparsity']}. Machine: {report['machine']['nproc']} cores "
        f"({report['machine']['cpu_model']}), {report['machine']['ram_gib']} GiB, torch threads "
        f"{report['machine']['torch_threads']}.",
        "",
    ]
    pairs = report["pruners"].items()
    stages = list(dict.fromkeys(s for _, pair in pairs for run in pair["runs"] for s in run["timings_s"]))
    rows = []
    for pruner, pair in pairs:
        same = ["identical" if pair[f"{what}_identical"] else "DIFFER" for what in ("masks", "weights")]
        for run in pair["runs"]:
            where = "on disk" if run["offload"] == "disk" else "in memory"
            rows.append([pruner, where, *(run["timings_s"].get(s, 0.0) for s in stages), run["peak_rss_mb"]])
            rows[-1] += [f"{run['peak_rss_mb'] / size_mb:.0%}", *same]
    headers = ["pruner", "weights", *stages, "peak RSS MB", "peak / model", "masks", "weights"]
    lines.append(markdown_table(headers, rows, "ll" + "r" * (len(stages) + 2) + "ll", digits=1))
    lines += [
        "",
        "Stage times in seconds. Peak RSS is the process's maximum resident set (ru_maxrss) at the end of "
        "each stage, so it includes the Python and torch runtime.",
        f"Target: peak RSS with `--offload disk` below {TARGET_RSS_SHARE:.0%} of the model's size.",
        "",
    ]
    if report.get("note"):
        lines += [report["note"], ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="--offload disk against the in-memory run.")
    parser.add_argument("--model", default=SYNTHETIC, help=f"{SYNTHETIC} (default), smollm2-135m or a folder")
    parser.add_argument("--layers", type=int, default=None, help=f"{SYNTHETIC} only: override the layer count")
    parser.add_argument("--pruners", default="wanda", help="comma-separated pruner names")
    parser.add_argument("--scorer", default="uniform")
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--eval-tokens", type=int, default=128, help="perplexity tokens (each forward reads all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=None, help="results path stem (default results/offload_<model>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    label, spec = resolve_model(args.model, args.layers)
    from lsa_framework.model.loading import checkpoint_folder

    folder = checkpoint_folder(spec)
    report: dict[str, Any] = {
        "model": label,
        "command": "python benchmarks/offload.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "note": args.note,
        "machine": machine_description(args.threads),
        "model_mb": model_bytes(folder) / 2**20,
        "shards": len(list(folder.glob("*.safetensors"))),
        "parameters": parameter_count(folder),
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "scorer": args.scorer,
        "sparsity": args.sparsity,
        "pruners": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="lsaf-offload-"))
    failed = False
    try:
        for pruner in [p.strip() for p in args.pruners.split(",") if p.strip()]:
            runs = []
            for offload in ("none", "disk"):
                print(f"[offload] {pruner}, offload={offload}", flush=True)
                runs.append(run_once(args, spec, pruner, offload, workdir / offload))
            same_masks = runs[0]["mask_sha256"] == runs[1]["mask_sha256"]
            same_weights, tensors = saved_weights_identical(workdir / "none" / "model", workdir / "disk" / "model")
            failed |= not (same_masks and same_weights)
            report["pruners"][pruner] = {
                "runs": runs,
                "masks_identical": same_masks,
                "weights_identical": same_weights,
                "tensors_compared": tensors,
            }
            for offload in ("none", "disk"):
                shutil.rmtree(workdir / offload, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = args.out if args.out is not None else RESULTS_DIR / f"offload_{label}"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out.with_name(out.name + ".json"), json.dumps(report, indent=2) + "\n")
    write_text(out.with_name(out.name + ".md"), render(report))
    print(render(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""MoE benchmark: scoring and pruning a mixture of experts against a dense model of the same active size.

    .venv/bin/python benchmarks/moe.py                                  # the default shapes, 1 thread
    .venv/bin/python benchmarks/moe.py --layers 2 --nsamples 8          # a quick check

Two random models (fixed seed, float32, the default model's tokenizer), built and saved once into a
temporary folder:

* ``moe`` — a Mixtral (``MixtralForCausalLM``): hidden H, L layers, E experts of intermediate size I,
  top-k routing;
* ``dense`` — a Mistral (``MistralForCausalLM``, no sliding window) with the same hidden size, layers
  and attention and an MLP of intermediate size k·I: the same number of parameters active per token.

For each model: one plain forward over the calibration tokens, then one ``lsaf run`` per recipe, each in
its own subprocess (so that its peak RSS is its own): wall time of every stage from the run's own
``timings_s``, peak RSS at the end of each stage from ``peak_rss_mb`` and the child's maximum RSS. Both
models use ``--allocator expert`` (which equals ``block`` on a dense model). Evaluation is the sparsity
count only (random models have no meaningful perplexity).

Results: ``benchmarks/results/moe_<name>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lsa_framework.storage.atomic import write_text

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
MARK = "@@LSAF_MOE_JSON@@"
RECIPES = (("owl", "wanda"), ("lse", "sparsegpt"))
STAGES = ("load", "calibration", "scoring", "allocation", "pruning", "evaluation", "save")


def build_models(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM

    from lsa_framework.model.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    shared = {
        "vocab_size": len(tokenizer),
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "max_position_embeddings": max(2048, args.seqlen),
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    configs = {
        "moe": (
            MixtralForCausalLM,
            MixtralConfig(
                **shared,
                intermediate_size=args.expert_intermediate,
                num_local_experts=args.experts,
                num_experts_per_tok=args.top_k,
            ),
        ),
        "dense": (
            MistralForCausalLM,
            MistralConfig(**shared, intermediate_size=args.top_k * args.expert_intermediate, sliding_window=None),
        ),
    }
    folders = {}
    for name, (cls, config) in configs.items():
        torch.manual_seed(0)
        model = cls(config).to(torch.float32).eval()  # every weight N(0, 0.02), fused experts included
        model.save_pretrained(folder / name, max_shard_size="500MB")
        tokenizer.save_pretrained(folder / name)
        folders[name] = folder / name
        del model
    return folders


def describe(folder: Path, top_k: int) -> dict[str, Any]:
    """Parameter counts from the saved config: total, in decoder layers, and active per token."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(folder))
    h, layers, kv = c.hidden_size, c.num_hidden_layers, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    attention = 2 * h * h + 2 * h * kv
    experts = getattr(c, "num_local_experts", 0)
    if experts:
        mlp_total = experts * 3 * h * c.intermediate_size + experts * h  # experts and router
        mlp_active = top_k * 3 * h * c.intermediate_size + experts * h
    else:
        mlp_total = mlp_active = 3 * h * c.intermediate_size
    embeddings = 2 * c.vocab_size * h
    return {
        "layers": layers,
        "hidden": h,
        "intermediate": c.intermediate_size,
        "experts": experts,
        "top_k": top_k if experts else None,
        "decoder_parameters": layers * (attention + mlp_total),
        "active_decoder_parameters": layers * (attention + mlp_active),
        "prunable_parameters": layers * (attention + (mlp_total - experts * h)),
        "total_parameters": layers * (attention + mlp_total) + embeddings,
    }


def run_config(args: argparse.Namespace, folder: Path, scorer: str, pruner: str, output: Path) -> dict[str, Any]:
    return {
        "model": str(folder),
        "scorer": scorer,
        "allocator": "expert",
        "pruner": pruner,
        "sparsity": args.sparsity,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "batch_size": args.batch_size,
        "calibration": "builtin",
        "eval": ["sparsity"],
        "threads": args.threads,
        "output": str(output),
    }


# ------------------------------------------------------------------------------------------------ jobs


def job_forward(values: dict[str, Any]) -> dict[str, Any]:
    """One plain forward of the model over the calibration tokens, in batches, under no_grad."""
    import torch

    from lsa_framework.config import build_config
    from lsa_framework.data.windows import sample_windows
    from lsa_framework.engine.plugins import resolve_dataset
    from lsa_framework.model.loading import load_model

    config = build_config({k: v for k, v in values.items() if k != "output"})
    torch.set_num_threads(config.threads or 1)
    loaded = load_model(config.model, config.dtype)
    ids = sample_windows(
        loaded.tokenizer, resolve_dataset(config).documents("calibration"), config.nsamples, config.seqlen, 0
    )
    start = time.perf_counter()
    with torch.no_grad():
        for batch in ids.split(config.batch_size):
            loaded.model.model(input_ids=batch, use_cache=False)  # the decoder, not the LM head
    return {"forward_s": round(time.perf_counter() - start, 3), "tokens": int(ids.numel())}


def job_run(values: dict[str, Any]) -> dict[str, Any]:
    from lsa_framework.config import build_config
    from lsa_framework.engine.pipeline import run

    result = run(build_config(values))
    record = json.loads((Path(values["output"]) / "run.json").read_text())
    return {
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "peak_rss_mb": result.peak_rss_mb,
        "sparsity": result.metrics.get("sparsity"),
        "units": len(result.units),
        "routing": record["extra"].get("routing", {}).get("tokens_per_expert", {}).get("scoring"),
    }


def own_peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def spawn(kind: str, values: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run a job in a fresh interpreter: its result, with the process's own peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "LSAF_LOAD_PLUGINS": ""}
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, str(Path(__file__).resolve()), "--job", kind, json.dumps(values)]
    start = time.perf_counter()
    child = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{kind} job failed ({child.returncode}):\n{child.stderr[-4000:]}")
    line = next(line for line in child.stdout.splitlines() if line.startswith(MARK))
    found = json.loads(line[len(MARK) :])
    found["process_wall_s"] = round(wall, 2)
    return found


# ----------------------------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    shapes = report["models"]
    moe, dense = shapes["moe"], shapes["dense"]
    lines = [
        f"# MoE benchmark: {report['name']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['cpu']} ({report['machine']['nproc']} cores shared with other users, load "
        f"average {report['machine']['loadavg_start']} at the start), torch {report['machine']['torch']} with "
        f"{report['threads']} thread, transformers {report['machine']['transformers']}.",
        "",
        "| model | layers | hidden | MLP | decoder params | active per token | prunable |",
        "|---|---:|---:|---|---:|---:|---:|",
        f"| moe (Mixtral) | {moe['layers']} | {moe['hidden']} | {moe['experts']} experts x {moe['intermediate']}, "
        f"top-{moe['top_k']} | {moe['decoder_parameters'] / 1e6:.1f} M | "
        f"{moe['active_decoder_parameters'] / 1e6:.1f} M | {moe['prunable_parameters'] / 1e6:.1f} M |",
        f"| dense (Mistral) | {dense['layers']} | {dense['hidden']} | {dense['intermediate']} | "
        f"{dense['decoder_parameters'] / 1e6:.1f} M | {dense['active_decoder_parameters'] / 1e6:.1f} M "
        f"| {dense['prunable_parameters'] / 1e6:.1f} M |",
        "",
        f"Calibration: {report['nsamples']} x {report['seqlen']} tokens (builtin text), batch {report['batch_size']}, "
        f"target sparsity {report['sparsity']}, `--allocator expert` for both.",
        "",
        "| model | recipe | plain forward s | scoring s | pruning s | scoring+pruning / forward | peak RSS MB "
        "(end of scoring) | peak RSS MB (run) | realised sparsity |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["runs"]:
        t = row["timings_s"]
        passes = t.get("scoring", 0.0) + t.get("pruning", 0.0)
        forward = report["forward"][row["model"]]["forward_s"]
        lines.append(
            f"| {row['model']} | {row['scorer']} + {row['pruner']} | {forward:.1f} | {t.get('scoring', 0):.1f} | "
            f"{t.get('pruning', 0):.1f} | {passes / forward:.2f} | {row['peak_rss_mb'].get('scoring', 0):.0f} | "
            f"{row['process_peak_rss_mb']:.0f} | {row['sparsity']:.4f} |"
        )
    lines += ["", "MoE / dense, same recipe:", "", "| recipe | scoring | pruning | peak RSS |", "|---|---:|---:|---:|"]
    by = {(r["model"], r["scorer"], r["pruner"]): r for r in report["runs"]}
    for scorer, pruner in RECIPES:
        m, d = by.get(("moe", scorer, pruner)), by.get(("dense", scorer, pruner))
        if m and d:
            lines.append(
                f"| {scorer} + {pruner} | {m['timings_s']['scoring'] / d['timings_s']['scoring']:.2f}x | "
                f"{m['timings_s']['pruning'] / d['timings_s']['pruning']:.2f}x | "
                f"{m['process_peak_rss_mb'] / d['process_peak_rss_mb']:.2f}x |"
            )
    routing = next((r["routing"] for r in report["runs"] if r["model"] == "moe" and r.get("routing")), None)
    if routing:
        lines += ["", "Calibration tokens per expert (dense model's routing, scoring pass):", ""]
        lines += [f"- {layer}: {counts}" for layer, counts in routing.items()]
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def machine(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": threads,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--expert-intermediate", type=int, default=1792)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, help="only rewrite the .md of an existing .json result")
    args = parser.parse_args()
    if args.render:
        write_text(args.render.with_suffix(".md"), markdown(json.loads(args.render.read_text())))
        return
    if args.job:
        kind, values = args.job[0], json.loads(args.job[1])
        found = job_forward(values) if kind == "forward" else job_run(values)
        found["process_peak_rss_mb"] = own_peak_rss_mb()
        print(MARK + json.dumps(found), flush=True)
        return
    name = args.name or f"synthetic-{args.experts}x{args.expert_intermediate}-L{args.layers}"
    report: dict[str, Any] = {
        "name": name,
        "command": shlex.join([Path(sys.executable).name, "benchmarks/moe.py", *sys.argv[1:]]),
        "machine": machine(args.threads),
        "threads": args.threads,
        **{k: getattr(args, k) for k in ("nsamples", "seqlen", "batch_size", "sparsity")},
        "forward": {},
        "runs": [],
        "note": (
            "Plain forward: the decoder (no LM head) over the calibration tokens, batch by batch. Scoring is the "
            "dense pass (statistics of every linear and, for the MoE, of every expert from its routed tokens) plus "
            "the scorer; pruning is the sequential pass (two forwards per layer) plus the pruner. Peak RSS is the "
            "child process's maximum resident memory. The machine is shared: with a load average of 5-9 on its "
            "2 cores, the same job varies by up to 30 % between runs (the dense forward took 28.0 s and 35.9 s in "
            "two runs of this script)."
        ),
    }
    with tempfile.TemporaryDirectory(prefix="lsaf-moe-bench-") as tmp:
        folders = build_models(args, Path(tmp))
        report["models"] = {m: describe(f, args.top_k) for m, f in folders.items()}
        for model, folder in folders.items():
            values = run_config(args, folder, "owl", "wanda", Path(tmp) / "unused")
            report["forward"][model] = spawn("forward", values, args.threads)
            print(model, "forward", report["forward"][model], flush=True)
            for scorer, pruner in RECIPES:
                out = Path(tmp) / f"out-{model}-{scorer}-{pruner}"
                found = spawn("run", run_config(args, folder, scorer, pruner, out), args.threads)
                report["runs"].append({"model": model, "scorer": scorer, "pruner": pruner, **found})
                print(model, scorer, pruner, found["timings_s"], found["process_peak_rss_mb"], flush=True)
    out = args.out or RESULTS_DIR / f"moe_{name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    write_text(out.with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()

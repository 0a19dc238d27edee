"""Speed benchmark: time and peak RSS of every stage, against one dense forward and the references.

    make bench                                                  # the default model, small calibration
    .venv/bin/python benchmarks/speed.py --reference --threads 1
    .venv/bin/python benchmarks/speed.py --model synthetic-1b   # a random ~1.2B Llama, built once

What it measures, all in ONE invocation so that the ratios compare like with like:

- For every pruner × scorer, one whole ``lsa_framework.prune`` run (load, calibration, scoring,
  allocation, pruning, evaluation on a few perplexity windows, save) in its own subprocess, so that its
  peak RSS is its own. Wall time and peak RSS per stage come from the run's own ``timings_s`` and
  ``peak_rss_mb``; CPU time per stage is added by this script (see ``_CpuStages``).
- One plain dense forward over the same calibration tokens — ``model(input_ids)`` in batches of the
  run's batch size under ``no_grad`` — in this process, before and after the runs (``--dense-repeats``
  each time); the median is the denominator of every ratio. The decoder layers alone (what a pass
  must run at least once) are timed too.
- Per decoder layer: the layer's plain forward, the same forward with the Gram hooks, and the LSE
  scoring of its linears from that Gram (the target "LSE scoring of a layer costs less than that
  layer's forward").
- ``--reference``: ``benchmarks/reference_prune.py`` (one hook and one statistic per projection, as
  the original Wanda and SparseGPT scripts) on the same model and calibration as the uniform Wanda
  and uniform SparseGPT runs; the masks must be identical linear by linear (zero patterns of the
  saved weights and mask hashes), and the time ratios reference / ours are reported.

Results: ``benchmarks/results/speed_<model>.md`` and ``.json`` (``--out`` to change). Timed tests
are deliberately not made of the targets; this script measures and reports them.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
MARK = "@@LSAF_SPEED_JSON@@"
SYNTHETIC = "synthetic-1b"
SYNTHETIC_SEED = 0
STAGES = ("load", "calibration", "scoring", "allocation", "pruning", "evaluation", "save")
#: Stages of a pass over the calibration set: "the whole run" of the targets.
PASS_STAGES = ("scoring", "allocation", "pruning")
TARGET_WHOLE_RUN = 2.5
TARGET_SPARSEGPT_SPEEDUP = 1.5


# ----------------------------------------------------------------------------------------- models


def synthetic_model_dir(layers: int | None = None) -> Path:
    """A Llama of ~1.2B parameters with random weights (fixed seed), saved once in the cache.

    TinyLlama-like shape (hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 KV heads) with the
    default model's tokenizer, whose 49152 tokens set the vocabulary (more than the usual 32000).
    ``layers`` overrides the layer count (a smaller model, cached in its own folder).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lsa_framework.data import cache_dir
    from lsa_framework.model.loading import default_model_dir, save_model_atomically

    name = SYNTHETIC if layers is None else f"{SYNTHETIC}-L{layers}"
    target = cache_dir() / name
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    config = LlamaConfig(
        vocab_size=max(32000, len(tokenizer)),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22 if layers is None else layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(SYNTHETIC_SEED)
    model = LlamaForCausalLM(config).to(torch.float32)  # random init, std = initializer_range (0.02)
    save_model_atomically(model, tokenizer, target, max_shard_size="1GB")  # shards, as large models ship
    return target


def resolve_model(name: str, layers: int | None) -> tuple[str, str]:
    """(label for the results, spec for RunConfig.model)."""
    if name == SYNTHETIC:
        label = SYNTHETIC if layers is None else f"{SYNTHETIC}-L{layers}"
        return label, str(synthetic_model_dir(layers))
    if layers is not None:
        raise SystemExit(f"--layers only applies to --model {SYNTHETIC}.")
    path = Path(name).expanduser()
    return (path.name if path.is_dir() else name), name


# --------------------------------------------------------------------------------------- measuring


@contextmanager
def timed(into: dict[str, float], name: str) -> Iterator[None]:
    """Wall and CPU seconds (all threads of this process) of a block, into ``into``."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        into[f"{name}_wall_s"] = round(time.perf_counter() - wall, 4)
        into[f"{name}_cpu_s"] = round(time.process_time() - cpu, 4)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine_description(threads: int | None) -> dict[str, Any]:
    import torch
    import transformers

    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    nproc = str(len(os.sched_getaffinity(0)))  # not `nproc`, which honours OMP_NUM_THREADS
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(mem_kb / 1024**2, 1),
        "torch": torch.__version__,
        "torch_threads": threads if threads else torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def base_config(args: argparse.Namespace, spec: str, **overrides: Any) -> Any:
    from lsa_framework.config import RunConfig

    values: dict[str, Any] = {
        "model": spec,
        "sparsity": args.sparsity,
        "allocator": "layer",
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "batch_size": args.batch_size,
        "seed": 0,
        "calibration": "builtin",
        "eval": ["perplexity"],
        "eval_opts": {"perplexity": {"max_tokens": args.eval_tokens}},
        "threads": args.threads,
    }
    values.update(overrides)
    return RunConfig(**values)


def dense_forward(args: argparse.Namespace, spec: str, lse_layers: int | None) -> dict[str, Any]:
    """Plain dense forwards over the calibration tokens, and (optionally) the per-layer LSE check."""
    import torch

    from lsa_framework.engine.pipeline import calibration_ids, resolve_dataset
    from lsa_framework.engine.sequential import capture_layer_inputs, layer_forward
    from lsa_framework.model.layout import find_layout
    from lsa_framework.model.loading import load_model

    config = base_config(args, spec, scorer="lse")
    out: dict[str, Any] = {"repeats": []}
    with timed(out, "load"):
        loaded = load_model(spec, config.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    layout = find_layout(model)
    ids = calibration_ids(config, resolve_dataset(config), tokenizer, model)
    out["calibration_shape"] = list(ids.shape)
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["num_layers"] = layout.num_layers
    batch = config.batch_size
    with torch.no_grad():
        for _ in range(args.dense_repeats):
            rep: dict[str, float] = {}
            with timed(rep, "forward"):
                for start in range(0, ids.shape[0], batch):
                    model(input_ids=ids[start : start + batch], use_cache=False)
            with timed(rep, "layers"):  # embedding + every decoder layer, no norm / lm_head
                acts = capture_layer_inputs(model, layout.layers[0], ids, batch)
                for index, layer in enumerate(layout.layers):
                    acts.hidden = layer_forward(layer, acts, index)
            out["repeats"].append(rep)
            del acts
    if lse_layers is not None:
        out["lse_layers"] = lse_layer_costs(model, layout, ids, config, lse_layers)
    out["peak_rss_mb"] = peak_rss_mb()
    del model, loaded
    gc.collect()
    return out


def lse_layer_costs(model: Any, layout: Any, ids: Any, config: Any, limit: int) -> list[dict[str, Any]]:
    """Per layer: plain forward, forward with Gram hooks, LSE scoring of its linears from that Gram."""
    from lsa_framework.engine.pipeline import resolve
    from lsa_framework.engine.sequential import capture_layer_inputs, layer_forward
    from lsa_framework.engine.stats import gather_stats

    scorer = resolve("scorers", "lse", {})
    units = resolve("allocators", "layer", {}).call("units", layout)
    acts = capture_layer_inputs(model, layout.layers[0], ids, config.batch_size)
    rows = []
    count = layout.num_layers if limit <= 0 else min(limit, layout.num_layers)
    for index in range(count):
        layer = layout.layers[index]
        row: dict[str, Any] = {"layer": index}
        with timed(row, "forward"):
            outputs = layer_forward(layer, acts, index)
        with timed(row, "forward_gram"), gather_stats(layout.linears[index], scorer.instance.needs) as stats:
            layer_forward(layer, acts, index)
        # The Gram's share: what the hooks add to the plain forward.
        row["gram_wall_s"] = round(max(row["forward_gram_wall_s"] - row["forward_wall_s"], 0.0), 4)
        row["gram_cpu_s"] = round(max(row["forward_gram_cpu_s"] - row["forward_cpu_s"], 0.0), 4)
        with timed(row, "lse"):
            scorer.call("score", units[index], stats)
        rows.append(row)
        acts.hidden = outputs
    return rows


# ------------------------------------------------------------------------------------- subprocesses


def _top_functions(profile: cProfile.Profile, count: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(profile)
    rows = []
    for (path, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = "/".join(Path(path).parts[-2:]) if path != "~" else ""
        rows.append(
            {
                "function": f"{short}:{line}({func})" if short else func,
                "calls": calls,
                "tottime": tottime,
                "cumtime": cumtime,
            }
        )
    rows.sort(key=lambda r: r["tottime"], reverse=True)
    return [{**r, "tottime": round(r["tottime"], 3), "cumtime": round(r["cumtime"], 3)} for r in rows[:count]]


def worker_run(payload: dict[str, Any]) -> dict[str, Any]:
    """One whole framework run (in its own process); its run.json content plus CPU time per stage."""
    import lsa_framework
    from lsa_framework.config import RunConfig
    from lsa_framework.engine import pipeline

    class _CpuStages(pipeline.Stages):
        """The engine's stage timer plus the process's CPU seconds per stage, into result.extra.

        CPU time is the contention-robust twin of wall time when other work shares the cores.
        """

        @contextmanager
        def __call__(self, name: str) -> Iterator[None]:
            start = time.process_time()
            try:
                with super().__call__(name):
                    yield
            finally:
                self.result.extra.setdefault("cpu_s", {})[name] = round(time.process_time() - start, 3)

    pipeline.Stages = _CpuStages  # type: ignore[misc]
    profiles: dict[str, list[dict[str, Any]]] = {}
    if payload.get("profile"):
        count = int(payload["profile"])

        def profiled(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                profile = cProfile.Profile()
                profile.enable()
                try:
                    return function(*args, **kwargs)
                finally:
                    profile.disable()
                    profiles[name] = _top_functions(profile, count)

            return wrapper

        pipeline.score_jobs = profiled("scoring", pipeline.score_jobs)  # type: ignore[assignment]
        pipeline.prune_model = profiled("pruning", pipeline.prune_model)  # type: ignore[assignment]

    start = time.perf_counter()
    result = lsa_framework.prune(RunConfig(**payload["config"]))
    return {"run": result.to_json(), "wall_s": round(time.perf_counter() - start, 3), "profile": profiles}


def worker_reference(payload: dict[str, Any]) -> dict[str, Any]:
    """The per-projection reference on the run's model and calibration; masks compared with the run's."""
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(HERE))
    from reference_prune import reference_prune

    from lsa_framework.config import RunConfig
    from lsa_framework.engine.pipeline import calibration_ids, mask_hash, resolve_dataset
    from lsa_framework.model.layout import find_layout
    from lsa_framework.model.loading import load_model

    config = RunConfig(**payload["config"])
    if config.threads:
        torch.set_num_threads(config.threads)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    rss: dict[str, float] = {}

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        wall, proc = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            timings[name] = round(time.perf_counter() - wall, 3)
            cpu[name] = round(time.process_time() - proc, 3)
            rss[name] = peak_rss_mb()

    with stage("load"):
        loaded = load_model(config.model, config.dtype)
        model = loaded.model
        layers = find_layout(model).layers
    with stage("calibration"):
        ids = calibration_ids(config, resolve_dataset(config), loaded.tokenizer, model)
    options = config.pruner_opts
    with stage("pruning"):
        masks = reference_prune(
            model,
            layers,
            ids,
            config.batch_size,
            config.pruner,  # type: ignore[arg-type]
            payload["layer_sparsity"],
            config.parsed_pattern,
            blocksize=int(options.get("blocksize", 128)),
            percdamp=float(options.get("percdamp", 0.01)),
            accumulation=payload["accumulation"],
        )

    saved: dict[str, torch.Tensor] = {}
    for file in sorted((Path(payload["framework_output"]) / "model").glob("*.safetensors")):
        saved.update(load_file(str(file)))
    modules = dict(model.named_modules())
    hashes = payload["framework_hashes"]
    linears = []
    for name, mask in masks.items():
        ours = saved[f"{name}.weight"].to(torch.float32)
        ref = modules[name].weight.detach().to(torch.float32)
        linears.append(
            {
                "linear": name,
                "zero_pattern_mismatches": int(((ours == 0) != (ref == 0)).sum()),
                "mask_hash_equal": mask_hash(mask) == hashes.get(name),
                "max_abs_weight_diff": float((ours - ref).abs().max()),
                "pruned": int(mask.sum()),
            }
        )
    missing = sorted(set(hashes) - set(masks))
    return {
        "timings_s": timings,
        "cpu_s": cpu,
        "peak_rss_mb": rss,
        "linears": linears,
        "linears_missing_in_reference": missing,
    }


def spawn(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Run a worker in a fresh Python process and return what it printed after MARK."""
    command = [sys.executable, str(Path(__file__).resolve()), "--_worker", kind, "--_payload", json.dumps(payload)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"The {kind} worker failed (exit {proc.returncode}); its stderr is above.")


# ------------------------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else float("nan")


def run_name(pruner: str, scorer: str, pipeline: str = "sequential") -> str:
    return f"{pruner} × {scorer}" + ("" if pipeline == "sequential" else f" ({pipeline})")


def run_ratios(run: dict[str, Any], dense: dict[str, float]) -> dict[str, float]:
    wall, cpu = run["timings_s"], run["extra"].get("cpu_s", {})
    ratios: dict[str, float] = {}
    for stage in ("scoring", "pruning"):
        ratios[f"{stage}_wall"] = _ratio(wall.get(stage, 0.0), dense["wall"])
        ratios[f"{stage}_cpu"] = _ratio(cpu.get(stage, 0.0), dense["cpu"])
    ratios["whole_wall"] = _ratio(sum(wall.get(s, 0.0) for s in PASS_STAGES), dense["wall"])
    ratios["whole_cpu"] = _ratio(sum(cpu.get(s, 0.0) for s in PASS_STAGES), dense["cpu"])
    return ratios


def reference_summary(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    wall, cpu = ours["timings_s"], ours["extra"].get("cpu_s", {})
    e2e = ("load", "calibration", *PASS_STAGES)
    ref_e2e = ("load", "calibration", "pruning")
    linears = ref["linears"]
    identical = (
        all(x["zero_pattern_mismatches"] == 0 and x["mask_hash_equal"] for x in linears)
        and not ref["linears_missing_in_reference"]
        and bool(linears)
    )
    return {
        "masks_identical": identical,
        "linears": len(linears),
        "linears_with_mismatch": sum(1 for x in linears if x["zero_pattern_mismatches"] or not x["mask_hash_equal"]),
        "zero_pattern_mismatches": sum(x["zero_pattern_mismatches"] for x in linears),
        "max_abs_weight_diff": max((x["max_abs_weight_diff"] for x in linears), default=float("nan")),
        "pruning_ours_wall_s": wall["pruning"],
        "pruning_ref_wall_s": ref["timings_s"]["pruning"],
        "pruning_speedup_wall": _ratio(ref["timings_s"]["pruning"], wall["pruning"]),
        "pruning_speedup_cpu": _ratio(ref["cpu_s"]["pruning"], cpu.get("pruning", 0.0)),
        "e2e_ours_wall_s": round(sum(wall.get(s, 0.0) for s in e2e), 3),
        "e2e_ref_wall_s": round(sum(ref["timings_s"][s] for s in ref_e2e), 3),
        "e2e_speedup_wall": _ratio(sum(ref["timings_s"][s] for s in ref_e2e), sum(wall.get(s, 0.0) for s in e2e)),
        "e2e_speedup_cpu": _ratio(sum(ref["cpu_s"][s] for s in ref_e2e), sum(cpu.get(s, 0.0) for s in e2e)),
        "ref_peak_rss_mb": max(ref["peak_rss_mb"].values()),
        # Up to the end of the pruning pass (peak RSS is cumulative), like the reference, which has no
        # evaluation or save stage.
        "ours_peak_rss_mb": ours["peak_rss_mb"]["pruning"],
    }


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    dense = report["dense"]
    lines = [
        f"# Speed benchmark — {report['model']}",
        "",
        "Produced by `benchmarks/speed.py` (`make bench` runs it with its defaults). Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
        "## Machine",
        "",
        *_table(
            ["nproc", "CPU", "RAM", "torch", "torch threads", "transformers", "python", "load avg (start → end)"],
            [
                [
                    m["nproc"],
                    m["cpu_model"],
                    f"{m['ram_gib']} GiB",
                    m["torch"],
                    m["torch_threads"],
                    m["transformers"],
                    m["python"],
                    f"{m['loadavg_start']} → {m.get('loadavg_end')}",
                ]
            ],
        ),
        "",
    ]
    if report.get("note"):
        lines += [f"**Note.** {report['note']}", ""]
    setup = report["setup"]
    lines += [
        f"Setup: {setup['parameters'] / 1e6:.0f}M parameters, calibration {setup['nsamples']}×{setup['seqlen']} "
        f"tokens in batches of {setup['batch_size']}, sparsity {setup['sparsity']}, allocator `layer`, "
        f"evaluation = perplexity on {setup['eval_tokens']} tokens, float32, CPU.",
        "",
        "## One plain dense forward over the calibration tokens",
        "",
        "`model(input_ids)` in batches of the run's batch size under `no_grad` (logits included); "
        "'layers only' = the embedding and every decoder layer (no final norm, no lm_head), the least a "
        "pass over the model must run. Measured in this process before and after the runs; the medians "
        "are the denominators below.",
        "",
        *_table(
            ["when", "forward wall s", "forward CPU s", "layers-only wall s", "layers-only CPU s"],
            [
                [r["when"], r["forward_wall_s"], r["forward_cpu_s"], r["layers_wall_s"], r["layers_cpu_s"]]
                for r in dense["repeats"]
            ]
            + [
                [
                    "**median**",
                    dense["forward"]["wall"],
                    dense["forward"]["cpu"],
                    dense["layers"]["wall"],
                    dense["layers"]["cpu"],
                ]
            ],
        ),
        "",
        "## Runs: wall seconds per stage and peak RSS",
        "",
        "Each run is one `lsa_framework.prune` call in its own process (output written to a temporary "
        "folder; `pruning` includes the per-layer checkpoint writes that come with `--output`). Peak RSS "
        "is the process's maximum resident set after each stage (cumulative), in MB.",
        "",
    ]
    runs = report["runs"]
    lines += _table(
        ["run", *STAGES, "total", "peak RSS MB", "ppl"],
        [
            [r["name"], *[r["timings_s"].get(s) for s in STAGES], r["total_wall_s"], r["peak_rss_mb"], r["ppl"]]
            for r in runs
        ],
    )
    lines += ["", "CPU seconds per stage (all threads of the run's process):", ""]
    lines += _table(["run", *STAGES], [[r["name"], *[r["cpu_s"].get(s) for s in STAGES]] for r in runs])
    lines += ["", "Peak RSS (MB) after each stage:", ""]
    lines += _table(["run", *STAGES], [[r["name"], *[r["peak_rss_by_stage"].get(s) for s in STAGES]] for r in runs])
    lines += [
        "",
        "## Ratios to one dense forward",
        "",
        "Pass time / median dense forward time, wall and CPU. 'whole' = scoring + allocation + pruning "
        "(the passes over the calibration set; load, evaluation and save excluded).",
        "",
    ]
    lines += _table(
        ["run", "scoring (wall)", "pruning (wall)", "whole (wall)", "scoring (CPU)", "pruning (CPU)", "whole (CPU)"],
        [
            [
                r["name"],
                r["ratios"]["scoring_wall"],
                r["ratios"]["pruning_wall"],
                r["ratios"]["whole_wall"],
                r["ratios"]["scoring_cpu"],
                r["ratios"]["pruning_cpu"],
                r["ratios"]["whole_cpu"],
            ]
            for r in runs
        ],
    )
    lse = report.get("lse_layers")
    if lse:
        s = lse["summary"]
        lines += [
            "",
            "## LSE scoring of a layer vs that layer's forward",
            "",
            "Per decoder layer, in this process: the layer's plain forward over the calibration batch, the "
            "same forward with the Gram hooks, and the LSE scorer on the layer's seven linears from that "
            "Gram. 'gram' = forward with hooks − plain forward.",
            "",
            *_table(
                ["", "forward", "gram (hooks)", "LSE", "LSE / forward", "(gram + LSE) / forward"],
                [
                    [
                        "sum over layers, wall s",
                        s["forward_wall_s"],
                        s["gram_wall_s"],
                        s["lse_wall_s"],
                        s["lse_over_forward_wall"],
                        s["gram_lse_over_forward_wall"],
                    ],
                    [
                        "sum over layers, CPU s",
                        s["forward_cpu_s"],
                        s["gram_cpu_s"],
                        s["lse_cpu_s"],
                        s["lse_over_forward_cpu"],
                        s["gram_lse_over_forward_cpu"],
                    ],
                ],
            ),
            "",
            f"Layers where LSE (CPU) < forward (CPU): {s['layers_lse_below_forward_cpu']} of {s['layers']}; "
            f"per-layer LSE/forward (CPU) from {s['min_layer_ratio_cpu']:.2f} to {s['max_layer_ratio_cpu']:.2f}.",
        ]
    refs = report.get("reference")
    if refs:
        lines += [
            "",
            "## Reference (per-projection) implementation vs the framework",
            "",
            "`benchmarks/reference_prune.py`: one forward hook and one statistic per projection (q, k, v "
            "each build their own Gram / scaler_row, so do gate and up), the mask computed per projection "
            "with the same `lsa_framework.pruners.masks` functions, every layer re-run for the next "
            f"inputs; statistics accumulation `{report['setup']['reference_accumulation']}`. Same model, "
            "calibration and per-layer sparsities as the framework's uniform run, in its own process. "
            "Speed-up = reference time / framework time (>1: the framework is faster). End to end = load + "
            "calibration + (scoring + allocation +) pruning.",
            "",
        ]
        lines += _table(
            [
                "pruner",
                "masks identical",
                "linears (mismatching)",
                "max abs ΔW",
                "pruning ours s",
                "pruning ref s",
                "speed-up pruning (wall / CPU)",
                "end to end ours s",
                "end to end ref s",
                "speed-up e2e (wall / CPU)",
                "peak RSS to pruning ours / ref MB",
            ],
            [
                [
                    name,
                    "**yes**" if r["masks_identical"] else "**NO**",
                    f"{r['linears']} ({r['linears_with_mismatch']})",
                    f"{r['max_abs_weight_diff']:.2e}",
                    r["pruning_ours_wall_s"],
                    r["pruning_ref_wall_s"],
                    f"{r['pruning_speedup_wall']:.2f} / {r['pruning_speedup_cpu']:.2f}",
                    r["e2e_ours_wall_s"],
                    r["e2e_ref_wall_s"],
                    f"{r['e2e_speedup_wall']:.2f} / {r['e2e_speedup_cpu']:.2f}",
                    f"{r['ours_peak_rss_mb']:.0f} / {r['ref_peak_rss_mb']:.0f}",
                ]
                for name, r in refs.items()
            ],
        )
    profiles = report.get("profiles")
    if profiles:
        lines += ["", "## Profiles (cProfile, separate runs; top functions by own time)", ""]
        for name, passes in profiles.items():
            for stage, rows in passes.items():
                if sum(r["tottime"] for r in rows) < 0.05:  # e.g. the skipped scoring pass of `uniform`
                    continue
                lines += [f"**{name}, {stage} pass**", ""]
                lines += _table(
                    ["function", "calls", "own s", "cumulative s"],
                    [[f"`{r['function']}`", r["calls"], r["tottime"], r["cumtime"]] for r in rows],
                )
                lines.append("")
    lines += ["", "## Targets", ""]
    for target in report["targets"]:
        lines.append(f"- **{target['status']}** — {target['text']}")
    lines.append("")
    return "\n".join(lines)


def _whole_run_floor(report: dict[str, Any]) -> str:
    """What LSA+Wanda would cost with free LSE scoring and free masks: three layer forwards (one in the
    scoring pass, two per layer in the pruning pass) plus one Gram accumulation."""
    lse = report.get("lse_layers")
    if not lse or lse["summary"]["layers"] != report["dense"].get("num_layers", lse["summary"]["layers"]):
        return ""
    s, dense = lse["summary"], report["dense"]
    wall = (3 * dense["layers"]["wall"] + s["gram_wall_s"]) / dense["forward"]["wall"]
    cpu = (3 * dense["layers"]["cpu"] + s["gram_cpu_s"]) / dense["forward"]["cpu"]
    return (
        f" Floor of this structure with free LSE scoring and free masks (three layers-only forwards plus "
        f"the Gram accumulation of the scoring pass): {wall:.2f}× wall, {cpu:.2f}× CPU."
    )


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, str]]:
    targets = []
    runs = {r["name"]: r for r in report["runs"]}
    lsa_wanda = runs.get("wanda × lse")
    if lsa_wanda:
        wall, cpu = lsa_wanda["ratios"]["whole_wall"], lsa_wanda["ratios"]["whole_cpu"]
        met = wall <= TARGET_WHOLE_RUN and cpu <= TARGET_WHOLE_RUN
        partly = wall <= TARGET_WHOLE_RUN or cpu <= TARGET_WHOLE_RUN
        targets.append(
            {
                "status": "met" if met else ("borderline" if partly else "not met"),
                "text": f"a whole LSA+Wanda run (scoring + allocation + pruning) ≤ {TARGET_WHOLE_RUN}× one dense "
                f"forward: {wall:.2f}× wall, {cpu:.2f}× CPU (one forward includes the lm_head; against the "
                f"layers-only forward it is {lsa_wanda['ratios_layers']['whole_wall']:.2f}× wall, "
                f"{lsa_wanda['ratios_layers']['whole_cpu']:.2f}× CPU).{_whole_run_floor(report)}",
            }
        )
    else:
        targets.append({"status": "not measured", "text": "the LSA+Wanda run (wanda × lse) was not in the grid."})
    basic = runs.get(run_name("wanda", "lse", "basic"))
    if basic:
        wall, cpu = basic["ratios"]["whole_wall"], basic["ratios"]["whole_cpu"]
        met = wall <= TARGET_WHOLE_RUN and cpu <= TARGET_WHOLE_RUN
        targets.append(
            {
                "status": "met" if met else "not met",
                "text": f"the same with `--pipeline basic` (Wanda from the dense model's statistics, kept by the "
                f"scoring pass: one forward in all, masks not the papers'): {wall:.2f}× wall, {cpu:.2f}× CPU.",
            }
        )
    sgpt = (report.get("reference") or {}).get("sparsegpt")
    if sgpt:
        wall, cpu = sgpt["pruning_speedup_wall"], sgpt["pruning_speedup_cpu"]
        met = sgpt["masks_identical"] and wall >= TARGET_SPARSEGPT_SPEEDUP and cpu >= TARGET_SPARSEGPT_SPEEDUP
        targets.append(
            {
                "status": "met" if met else "not met",
                "text": f"the SparseGPT path ≥ {TARGET_SPARSEGPT_SPEEDUP}× faster than the per-projection reference "
                f"at identical masks: masks identical = {sgpt['masks_identical']}, pruning pass {wall:.2f}× wall / "
                f"{cpu:.2f}× CPU, end to end {sgpt['e2e_speedup_wall']:.2f}× wall / "
                f"{sgpt['e2e_speedup_cpu']:.2f}× CPU. The reference runs a transcription of the original "
                "`fasterprune` per projection (its own Hessian, H⁻¹ factor, full block sorts and column loop); "
                "the framework shares one Gram, one factor and one column loop per input group (q/k/v, "
                "gate/up) and selects without full sorts. End to end also counts the forwards, the same in both.",
            }
        )
    else:
        targets.append({"status": "not measured", "text": "SparseGPT vs reference: run with --reference."})
    lse = report.get("lse_layers")
    if lse:
        s = lse["summary"]
        met = s["layers_lse_below_forward_cpu"] == s["layers"] and s["lse_over_forward_wall"] < 1
        targets.append(
            {
                "status": "met" if met else "not met",
                "text": f"LSE scoring of a layer costs less than that layer's forward: LSE / forward = "
                f"{s['lse_over_forward_wall']:.2f} wall, {s['lse_over_forward_cpu']:.2f} CPU summed over layers; "
                f"below 1 (CPU) in {s['layers_lse_below_forward_cpu']} of {s['layers']} layers (max "
                f"{s['max_layer_ratio_cpu']:.2f}); with the Gram accumulation included, "
                f"{s['gram_lse_over_forward_cpu']:.2f} CPU. The LSE search does not depend on the number of "
                f"calibration tokens ({report['setup']['nsamples']}×{report['setup']['seqlen']} here) while the "
                "forward grows with it, so the ratio falls as the calibration grows.",
            }
        )
    return targets


def summarise_lse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def total(key: str) -> float:
        return round(sum(r[key] for r in rows), 3)

    per_layer = [r["lse_cpu_s"] / r["forward_cpu_s"] for r in rows if r["forward_cpu_s"] > 0]
    return {
        "layers": len(rows),
        **{f"{k}_{u}_s": total(f"{k}_{u}_s") for k in ("forward", "gram", "lse") for u in ("wall", "cpu")},
        "lse_over_forward_wall": _ratio(total("lse_wall_s"), total("forward_wall_s")),
        "lse_over_forward_cpu": _ratio(total("lse_cpu_s"), total("forward_cpu_s")),
        "gram_lse_over_forward_wall": _ratio(total("gram_wall_s") + total("lse_wall_s"), total("forward_wall_s")),
        "gram_lse_over_forward_cpu": _ratio(total("gram_cpu_s") + total("lse_cpu_s"), total("forward_cpu_s")),
        "layers_lse_below_forward_cpu": sum(1 for x in per_layer if x < 1),
        "min_layer_ratio_cpu": min(per_layer, default=float("nan")),
        "max_layer_ratio_cpu": max(per_layer, default=float("nan")),
    }


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time and peak RSS of every stage of lsa_framework runs, against one dense forward.",
    )
    parser.add_argument("--model", default="smollm2-135m", help=f"smollm2-135m, {SYNTHETIC} or a model folder")
    parser.add_argument("--nsamples", type=int, default=None, help="calibration sequences (16; 4 for synthetic)")
    parser.add_argument("--seqlen", type=int, default=None, help="calibration length (256; 128 for synthetic)")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration sequences per forward")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--pruners", default="magnitude,wanda,sparsegpt", help="comma-separated pruner names")
    parser.add_argument("--scorers", default="uniform,lse", help="comma-separated scorer names")
    parser.add_argument("--eval-tokens", type=int, default=None, help="perplexity tokens (default 4×seqlen)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads everywhere (default: torch's)")
    parser.add_argument("--dense-repeats", type=int, default=2, help="dense forwards before and after the runs")
    parser.add_argument(
        "--lse-layers", type=int, default=0, help="layers in the per-layer LSE check (0: all; -1: skip it)"
    )
    parser.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the per-projection references and assert identical masks (default: on)",
    )
    parser.add_argument(
        "--reference-accumulation",
        choices=("exact", "running"),
        default="exact",
        help="reference statistics: the engine's float ops (masks asserted identical) or the originals' "
        "running averages (mismatches only reported)",
    )
    parser.add_argument(
        "--basic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the scored Wanda and SparseGPT runs with --pipeline basic (default: on)",
    )
    parser.add_argument("--profile", type=int, default=0, help="also profile wanda×lse and sparsegpt×uniform: top N")
    parser.add_argument("--layers", type=int, default=None, help=f"{SYNTHETIC} only: override the layer count")
    parser.add_argument("--note", default="", help="a free-text note for the results file (e.g. other load)")
    parser.add_argument("--out", type=Path, default=None, help="results path stem (default results/speed_<model>)")
    parser.add_argument(
        "--render", type=Path, default=None, help="only re-render the .md (and targets) from a results .json"
    )
    parser.add_argument("--_worker", choices=("run", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--_payload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    synthetic = args.model == SYNTHETIC
    if args.nsamples is None:
        args.nsamples = 4 if synthetic else 16
    if args.seqlen is None:
        args.seqlen = 128 if synthetic else 256
    if args.eval_tokens is None:
        args.eval_tokens = 4 * args.seqlen
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker:
        payload = json.loads(args._payload)
        if payload.get("config", {}).get("threads"):
            import torch

            torch.set_num_threads(payload["config"]["threads"])
        result = worker_run(payload) if args._worker == "run" else worker_reference(payload)
        print(MARK + json.dumps(result))
        return 0

    if args.render is not None:
        report = json.loads(args.render.read_text())
        report["targets"] = evaluate_targets(report)
        args.render.write_text(json.dumps(report, indent=2) + "\n")
        md_path = args.render.with_name(args.render.name.removesuffix(".json") + ".md")
        md_path.write_text(render_markdown(report))
        print(f"[speed] re-rendered {md_path}", flush=True)
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    label, spec = resolve_model(args.model, args.layers)
    out = args.out if args.out is not None else RESULTS_DIR / f"speed_{label}"
    pruners = [p.strip() for p in args.pruners.split(",") if p.strip()]
    scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]
    command = "python benchmarks/speed.py " + shlex.join(a for a in (argv if argv is not None else sys.argv[1:]))
    report: dict[str, Any] = {
        "model": label,
        "model_spec": spec,
        "command": command,
        "note": args.note,
        "machine": machine_description(args.threads),
    }
    print(f"[speed] {label}: dense forward ×{args.dense_repeats} and the per-layer LSE check", flush=True)
    first = dense_forward(args, spec, None if args.lse_layers < 0 else args.lse_layers)
    report["setup"] = {
        "parameters": first["parameters"],
        "nsamples": first["calibration_shape"][0],
        "seqlen": first["calibration_shape"][1],
        "batch_size": args.batch_size,
        "sparsity": args.sparsity,
        "eval_tokens": args.eval_tokens,
        "threads": args.threads,
        "reference_accumulation": args.reference_accumulation,
    }
    if "lse_layers" in first:
        report["lse_layers"] = {"summary": summarise_lse(first["lse_layers"]), "layers": first["lse_layers"]}

    workdir = Path(tempfile.mkdtemp(prefix="lsaf-speed-"))
    runs: list[dict[str, Any]] = []
    seq = "sequential"
    keep_for_reference = {("wanda", "uniform", seq), ("sparsegpt", "uniform", seq)} if args.reference else set()
    grid = [(p, s, seq) for p in pruners for s in scorers]
    if args.basic:  # the one-forward pipeline, for the scored runs
        grid += [(p, s, "basic") for p in pruners for s in scorers if s != "uniform" and p != "magnitude"]
    wanted = set(grid)
    grid += [key for key in sorted(keep_for_reference) if key not in grid]
    raw_runs: dict[tuple[str, str, str], dict[str, Any]] = {}
    try:
        for pruner, scorer, pipeline in grid:
            output = workdir / f"run-{pruner}-{scorer}-{pipeline}"
            config = base_config(
                args, spec, pruner=pruner, scorer=scorer, pipeline=pipeline, output=str(output), overwrite=True
            )
            print(f"[speed] run {run_name(pruner, scorer, pipeline)}", flush=True)
            got = spawn("run", {"config": config.model_dump(mode="json")})
            raw_runs[(pruner, scorer, pipeline)] = got
            if (pruner, scorer, pipeline) not in keep_for_reference:
                shutil.rmtree(output, ignore_errors=True)
        references: dict[str, Any] = {}
        for pruner, scorer, pipeline in sorted(keep_for_reference):
            got = raw_runs[(pruner, scorer, pipeline)]["run"]
            units = sorted(got["units"], key=lambda u: u["layer"])
            payload = {
                "config": got["config"],
                "layer_sparsity": [u["sparsity"] for u in units],
                "framework_output": str(workdir / f"run-{pruner}-{scorer}-{pipeline}"),
                "framework_hashes": got["mask_sha256"],
                "accumulation": args.reference_accumulation,
            }
            print(f"[speed] reference {pruner}", flush=True)
            ref = spawn("reference", payload)
            references[pruner] = {"raw": ref, "summary": reference_summary(got, ref)}
            shutil.rmtree(workdir / f"run-{pruner}-{scorer}-{pipeline}", ignore_errors=True)
        profiles: dict[str, Any] = {}
        if args.profile:
            for pruner, scorer in (("wanda", "lse"), ("sparsegpt", "uniform")):
                if pruner not in pruners:
                    continue
                config = base_config(args, spec, pruner=pruner, scorer=scorer, eval=[], eval_opts={})
                print(f"[speed] profile {pruner} × {scorer}", flush=True)
                got = spawn("run", {"config": config.model_dump(mode="json"), "profile": args.profile})
                profiles[f"{pruner} × {scorer}"] = got["profile"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"[speed] dense forward ×{args.dense_repeats} again", flush=True)
    last = dense_forward(args, spec, None)
    repeats = [{"when": "before", **r} for r in first["repeats"]] + [{"when": "after", **r} for r in last["repeats"]]
    dense = {
        "repeats": repeats,
        "forward": {
            "wall": round(_median([r["forward_wall_s"] for r in repeats]), 4),
            "cpu": round(_median([r["forward_cpu_s"] for r in repeats]), 4),
        },
        "layers": {
            "wall": round(_median([r["layers_wall_s"] for r in repeats]), 4),
            "cpu": round(_median([r["layers_cpu_s"] for r in repeats]), 4),
        },
        "load_wall_s": first["load_wall_s"],
        "num_layers": first["num_layers"],
        "peak_rss_mb": max(first["peak_rss_mb"], last["peak_rss_mb"]),
    }
    report["dense"] = dense

    for (pruner, scorer, pipeline), got in raw_runs.items():
        if (pruner, scorer, pipeline) not in wanted:
            continue
        run = got["run"]
        runs.append(
            {
                "name": run_name(pruner, scorer, pipeline),
                "pruner": pruner,
                "scorer": scorer,
                "pipeline": pipeline,
                "timings_s": run["timings_s"],
                "cpu_s": run["extra"].get("cpu_s", {}),
                "peak_rss_by_stage": run["peak_rss_mb"],
                "peak_rss_mb": max(run["peak_rss_mb"].values()),
                "total_wall_s": round(sum(run["timings_s"].values()), 3),
                "ppl": round(run["metrics"].get("perplexity", float("nan")), 3),
                "ratios": run_ratios(run, dense["forward"]),
                "ratios_layers": run_ratios(run, dense["layers"]),
            }
        )
    report["runs"] = runs
    if args.reference:
        report["reference"] = {name: r["summary"] for name, r in references.items()}
        report["reference_linears"] = {name: r["raw"]["linears"] for name, r in references.items()}
        report["reference_stages"] = {
            name: {k: r["raw"][k] for k in ("timings_s", "cpu_s", "peak_rss_mb")} for name, r in references.items()
        }
    if profiles:
        report["profiles"] = profiles
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    report["targets"] = evaluate_targets(report)

    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.parent / f"{out.name}.json", out.parent / f"{out.name}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    print(f"[speed] wrote {md_path} and {json_path}", flush=True)
    for target in report["targets"]:
        print(f"[speed] {target['status']}: {target['text']}", flush=True)
    if args.reference and args.reference_accumulation == "exact":
        bad = [name for name, r in report["reference"].items() if not r["masks_identical"]]
        if bad:
            print(f"[speed] FAILED: masks differ from the reference for {', '.join(bad)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

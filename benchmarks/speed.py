"""Speed benchmark: time and peak RSS of every stage, against one dense forward and the references.

    make bench                                                  # the default model, small calibration
    .venv/bin/python benchmarks/speed.py --reference --threads 1
    .venv/bin/python benchmarks/speed.py --model synthetic-1b   # a random ~1.2B Llama, built once

All in ONE invocation, so that the ratios compare like with like:

- every pruner × scorer (and the scored ones with ``--pipeline basic``): one ``lsa_framework.prune`` run
  in its own process, so that its peak RSS is its own. Wall time and peak RSS per stage are the run's
  own (run.json ``timings_s``, ``cpu_s``, ``peak_rss_mb``);
- one plain dense forward over the session's calibration windows, before and after the runs (the median
  is the denominator of every ratio), and the decoder layers alone, each called with its recorded call;
- per decoder layer: its forward, the same with the Gram hooks, and the LSE scoring of its linears;
- ``--reference``: ``reference_prune.py`` (one hook and statistic per projection, as the original Wanda
  and SparseGPT scripts) on the uniform runs' model and calibration; masks must be identical.

Results: ``benchmarks/results/speed_<model>.md`` and ``.json`` (``--out`` to change, ``--render`` to
re-render the .md from a .json). The targets are measured and reported here, not made timed tests.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, SYNTHETIC, base_config, machine_description, resolve_model
from speed_report import DENSE, UNITS, run_name, write_report

MARK = "@@LSAF_SPEED_JSON@@"
ACCUMULATION = (
    "reference statistics: the engine's float ops (masks asserted identical) or the originals' running averages "
    "(mismatches only reported)"
)
PASS_STAGES = ("scoring", "allocation", "pruning")  # the passes over the calibration set: "the whole run"


# --------------------------------------------------------------------------------------- measuring


@contextmanager
def timed(into: dict[str, Any], name: str) -> Iterator[None]:
    """Wall and CPU seconds (all threads of this process) of a block, into ``into``."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        into[f"{name}_wall_s"] = round(time.perf_counter() - wall, 4)
        into[f"{name}_cpu_s"] = round(time.process_time() - cpu, 4)


def open_session(config: Any) -> tuple[Any, Any]:
    """A session with its model loaded and its calibration windows drawn, and the result timing both."""
    from lsa_framework.engine.observer import Observer
    from lsa_framework.engine.plugins import resolve_dataset
    from lsa_framework.engine.session import Session
    from lsa_framework.result import RunResult

    session, result = Session(config, resolve_dataset(config), Observer()), RunResult(config=config)
    session.load(result)
    session.calibrate(result)
    return session, result


def dense_forward(args: argparse.Namespace, spec: str, lse_layers: int | None) -> dict[str, Any]:
    """Plain dense forwards over the calibration windows, and (optionally) the per-layer LSE check."""
    import torch

    from lsa_framework.engine.layer_calls import layer_outputs
    from lsa_framework.engine.observer import peak_rss_mb

    session, result = open_session(base_config(args, spec))
    model, layout, ids = session.model, session.layout, session.input_ids
    out: dict[str, Any] = {"load_wall_s": result.timings["load"], "calibration_shape": list(ids.shape)}
    out |= {"parameters": sum(p.numel() for p in model.parameters()), "num_layers": layout.num_layers, "repeats": []}
    with torch.no_grad():
        for _ in range(args.dense_repeats):
            rep: dict[str, float] = {}
            with timed(rep, "forward"):  # logits included
                for batch in ids.split(args.batch_size):
                    model(input_ids=batch, use_cache=False)
            with timed(rep, "layers"):  # the embedding, every layer's recorded call, every decoder layer
                acts = session.activations()
                for index, layer in enumerate(layout.layers):
                    acts.hidden = layer_outputs(layer, acts, index)
            out["repeats"].append(rep)
    if lse_layers is not None:
        out["lse_layers"] = lse_layer_costs(session, lse_layers)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def lse_layer_costs(session: Any, limit: int) -> list[dict[str, Any]]:
    """Per layer: plain forward, forward with the Gram hooks, LSE scoring of its linears from that Gram."""
    from lsa_framework.engine.layer_calls import layer_outputs
    from lsa_framework.engine.plugins import resolve
    from lsa_framework.engine.statistics import gather_stats

    layout = session.layout
    scorer = resolve("scorers", "lse", {})
    units = resolve("allocators", "layer", {}).units(layout)  # one unit per layer, in order
    acts = session.activations()
    rows = []
    for index in range(layout.num_layers if limit <= 0 else min(limit, layout.num_layers)):
        layer = layout.layers[index]
        row: dict[str, Any] = {"layer": index}
        with timed(row, "forward"):
            outputs = layer_outputs(layer, acts, index)
        with timed(row, "forward_gram"), gather_stats(layout.linears[index], scorer.needs) as stats:
            layer_outputs(layer, acts, index)
        for u in UNITS:  # the Gram's share: what the hooks add to the plain forward
            row[f"gram_{u}_s"] = round(max(row[f"forward_gram_{u}_s"] - row[f"forward_{u}_s"], 0.0), 4)
        with timed(row, "lse"):
            scorer.score(units[index], stats)
        rows.append(row)
        acts.hidden = outputs
    return rows


# ------------------------------------------------------------------------------------- subprocesses


def profiled(function: Callable[..., Any], name: str, into: dict[str, Any], count: int) -> Callable[..., Any]:
    """``function`` under cProfile; its top ``count`` functions by own time go to ``into[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        profile = cProfile.Profile()
        profile.enable()
        try:
            return function(*args, **kwargs)
        finally:
            profile.disable()
            rows = []
            for (path, line, func), (_, calls, own, total, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
                where = f"{'/'.join(Path(path).parts[-2:])}:{line}({func})" if path != "~" else func
                rows.append({"function": where, "calls": calls, "tottime": round(own, 3), "cumtime": round(total, 3)})
            into[name] = sorted(rows, key=lambda r: r["tottime"], reverse=True)[:count]

    return wrapper


def worker_run(payload: dict[str, Any]) -> dict[str, Any]:
    """One whole framework run (in its own process): its run.json content, CPU seconds per stage included."""
    import lsa_framework
    from lsa_framework.config import RunConfig
    from lsa_framework.engine.session import Session

    profiles: dict[str, Any] = {}
    if payload.get("profile"):
        for name, method in (("scoring", "score"), ("pruning", "prune")):
            setattr(Session, method, profiled(getattr(Session, method), name, profiles, int(payload["profile"])))
    result = lsa_framework.prune(RunConfig(**payload["config"]))
    return {"run": result.to_json(), "profile": profiles}


def worker_reference(payload: dict[str, Any]) -> dict[str, Any]:
    """The per-projection reference on the run's model and calibration; its masks compared with the run's."""
    from reference_prune import reference_prune
    from safetensors.torch import load_file

    from lsa_framework.config import RunConfig
    from lsa_framework.engine.masks import mask_hash
    from lsa_framework.engine.observer import stage

    config = RunConfig(**payload["config"])
    session, result = open_session(config)  # the run's own load and calibration stages
    opts = config.pruner_opts
    with stage(result, "pruning"):
        masks = reference_prune(
            session.model,
            session.stack,
            session.input_ids,
            config.batch_size,
            config.pruner,
            payload["layer_sparsity"],
            config.parsed_pattern,
            blocksize=int(opts.get("blocksize", 128)),
            percdamp=float(opts.get("percdamp", 0.01)),
            accumulation=payload["accumulation"],
        )
    saved = {}
    for file in sorted((Path(payload["framework_output"]) / "model").glob("*.safetensors")):
        saved.update(load_file(str(file)))
    modules, hashes = dict(session.model.named_modules()), payload["framework_hashes"]
    linears = []
    for name, mask in masks.items():
        ours, ref = saved[f"{name}.weight"].float(), modules[name].weight.detach().float()
        linears.append(
            {
                "linear": name,
                "zero_pattern_mismatches": int(((ours == 0) != (ref == 0)).sum()),
                "mask_hash_equal": mask_hash(mask) == hashes.get(name),
                "max_abs_weight_diff": float((ours - ref).abs().max()),
                "pruned": int(mask.sum()),
            }
        )
    stages = {"timings_s": result.timings, "cpu_s": result.cpu_s, "peak_rss_mb": result.peak_rss_mb}
    return {**stages, "linears": linears, "linears_missing_in_reference": sorted(set(hashes) - set(masks))}


def spawn(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Run a worker in a fresh Python process and return what it printed after MARK."""
    command = [sys.executable, str(Path(__file__).resolve()), "--_worker", kind, "--_payload", json.dumps(payload)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK) :]))
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"The {kind} worker failed (exit {proc.returncode}); its stderr is above.")


def run_grid(args: argparse.Namespace, spec: str) -> tuple[dict[tuple[str, ...], Any], dict[str, Any], dict]:
    """The grid's runs (run.json contents by (pruner, scorer, pipeline)), the references and the profiles."""
    pruners, scorers = _names(args.pruners), _names(args.scorers)
    grid = [(p, s, "sequential") for p in pruners for s in scorers]
    if args.basic:  # the one-forward pipeline, for the scored runs
        grid += [(p, s, "basic") for p in pruners for s in scorers if s != "uniform" and p != "magnitude"]
    for_reference = [(p, "uniform", "sequential") for p in ("wanda", "sparsegpt")] if args.reference else []
    runs: dict[tuple[str, ...], Any] = {}
    references: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="lsaf-speed-"))
    try:
        for key in grid + [k for k in for_reference if k not in grid]:
            pruner, scorer, pipeline = key
            output = workdir / "-".join(key)
            config = base_config(args, spec, pruner=pruner, scorer=scorer, pipeline=pipeline, output=str(output))
            print(f"[speed] run {run_name(*key)}", flush=True)
            runs[key] = got = spawn("run", {"config": config.model_dump(mode="json")})["run"]
            if key in for_reference:
                print(f"[speed] reference {pruner}", flush=True)
                sparsity = [u["sparsity"] for u in sorted(got["units"], key=lambda u: u["layer"])]
                payload = {"config": got["config"], "layer_sparsity": sparsity, "framework_output": str(output)}
                payload |= {"framework_hashes": got["mask_sha256"], "accumulation": args.reference_accumulation}
                ref = spawn("reference", payload)
                references[pruner] = {"raw": ref, "summary": reference_summary(got, ref)}
            shutil.rmtree(output, ignore_errors=True)
        for pruner, scorer in (("wanda", "lse"), ("sparsegpt", "uniform")) if args.profile else ():
            if pruner in pruners:
                print(f"[speed] profile {pruner} × {scorer}", flush=True)
                config = base_config(args, spec, pruner=pruner, scorer=scorer, eval=[], eval_opts={})
                got = spawn("run", {"config": config.model_dump(mode="json"), "profile": args.profile})
                profiles[f"{pruner} × {scorer}"] = got["profile"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {k: v for k, v in runs.items() if k in grid}, references, profiles


# ---------------------------------------------------------------------------------------- summaries


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else float("nan")


def _sum(times: dict[str, float], stages: tuple[str, ...]) -> float:
    return round(sum(times.get(s, 0.0) for s in stages), 3)


def run_ratios(run: dict[str, Any], dense: dict[str, float]) -> dict[str, float]:
    """Pass time over one dense forward's, wall and CPU; 'whole' = scoring + allocation + pruning."""
    ratios: dict[str, float] = {}
    for u, times in zip(UNITS, (run["timings_s"], run.get("cpu_s", {})), strict=True):
        ratios |= {f"{s}_{u}": _ratio(times.get(s, 0.0), dense[u]) for s in ("scoring", "pruning")}
        ratios[f"whole_{u}"] = _ratio(_sum(times, PASS_STAGES), dense[u])
    return ratios


def run_entry(key: tuple[str, ...], run: dict[str, Any], dense: dict[str, Any]) -> dict[str, Any]:
    """What the report keeps of one run: its own stage timings and peak RSS, and the ratios."""
    return {
        "name": run_name(*key),
        **dict(zip(("pruner", "scorer", "pipeline"), key, strict=True)),
        "timings_s": run["timings_s"],
        "cpu_s": run.get("cpu_s", {}),
        "peak_rss_by_stage": run["peak_rss_mb"],
        "peak_rss_mb": max(run["peak_rss_mb"].values()),
        "total_wall_s": round(sum(run["timings_s"].values()), 3),
        "ppl": round(run["metrics"].get("perplexity", float("nan")), 3),
        "ratios": run_ratios(run, dense["forward"]),
        "ratios_layers": run_ratios(run, dense["layers"]),
    }


def reference_summary(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Masks compared, and reference / ours times: the pruning pass, and end to end (load, calibration, passes)."""
    wall, cpu, linears = ours["timings_s"], ours.get("cpu_s", {}), ref["linears"]
    e2e, ref_e2e = ("load", "calibration", *PASS_STAGES), ("load", "calibration", "pruning")
    mismatching = [x for x in linears if x["zero_pattern_mismatches"] or not x["mask_hash_equal"]]
    return {
        "masks_identical": bool(linears) and not mismatching and not ref["linears_missing_in_reference"],
        "linears": len(linears),
        "linears_with_mismatch": len(mismatching),
        "zero_pattern_mismatches": sum(x["zero_pattern_mismatches"] for x in linears),
        "max_abs_weight_diff": max((x["max_abs_weight_diff"] for x in linears), default=float("nan")),
        "pruning_ours_wall_s": wall["pruning"],
        "pruning_ref_wall_s": ref["timings_s"]["pruning"],
        "pruning_speedup_wall": _ratio(ref["timings_s"]["pruning"], wall["pruning"]),
        "pruning_speedup_cpu": _ratio(ref["cpu_s"]["pruning"], cpu.get("pruning", 0.0)),
        "e2e_ours_wall_s": _sum(wall, e2e),
        "e2e_ref_wall_s": _sum(ref["timings_s"], ref_e2e),
        "e2e_speedup_wall": _ratio(_sum(ref["timings_s"], ref_e2e), _sum(wall, e2e)),
        "e2e_speedup_cpu": _ratio(_sum(ref["cpu_s"], ref_e2e), _sum(cpu, e2e)),
        "ref_peak_rss_mb": max(ref["peak_rss_mb"].values()),
        "ours_peak_rss_mb": ours["peak_rss_mb"]["pruning"],  # peak RSS is cumulative: up to the same point
    }


def dense_summary(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    repeats = [{"when": "before", **r} for r in first["repeats"]] + [{"when": "after", **r} for r in last["repeats"]]
    median = {w: {u: round(statistics.median(r[f"{w}_{u}_s"] for r in repeats), 4) for u in UNITS} for w in DENSE}
    kept = {k: first[k] for k in ("load_wall_s", "num_layers")}
    return {"repeats": repeats, **median, **kept, "peak_rss_mb": max(first["peak_rss_mb"], last["peak_rss_mb"])}


def summarise_lse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    total = {
        f"{k}_{u}_s": round(sum(r[f"{k}_{u}_s"] for r in rows), 3) for k in ("forward", "gram", "lse") for u in UNITS
    }
    per_layer = [r["lse_cpu_s"] / r["forward_cpu_s"] for r in rows if r["forward_cpu_s"] > 0]
    summary: dict[str, Any] = {"layers": len(rows), **total}
    for u in UNITS:
        summary[f"lse_over_forward_{u}"] = _ratio(total[f"lse_{u}_s"], total[f"forward_{u}_s"])
        summary[f"gram_lse_over_forward_{u}"] = _ratio(
            total[f"gram_{u}_s"] + total[f"lse_{u}_s"], total[f"forward_{u}_s"]
        )
    summary["layers_lse_below_forward_cpu"] = sum(1 for x in per_layer if x < 1)
    summary["min_layer_ratio_cpu"] = min(per_layer, default=float("nan"))
    summary["max_layer_ratio_cpu"] = max(per_layer, default=float("nan"))
    return summary


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time and peak RSS of every stage of lsa_framework runs.")
    add, on = parser.add_argument, argparse.BooleanOptionalAction
    add("--model", default="smollm2-135m", help=f"smollm2-135m, {SYNTHETIC} or a model folder")
    add("--nsamples", type=int, default=None, help="calibration sequences (16; 4 for synthetic)")
    add("--seqlen", type=int, default=None, help="calibration length (256; 128 for synthetic)")
    add("--batch-size", type=int, default=8, help="calibration sequences per forward")
    add("--sparsity", type=float, default=0.5)
    add("--pruners", default="magnitude,wanda,sparsegpt", help="comma-separated pruner names")
    add("--scorers", default="uniform,lse", help="comma-separated scorer names")
    add("--eval-tokens", type=int, default=None, help="perplexity tokens (default 4×seqlen)")
    add("--threads", type=int, default=None, help="torch threads everywhere (default: torch's)")
    add("--dense-repeats", type=int, default=2, help="dense forwards before and after the runs")
    add("--lse-layers", type=int, default=0, help="layers in the per-layer LSE check (0: all; -1: skip it)")
    add("--reference", action=on, default=True, help="also time the per-projection references, assert equal masks")
    add("--reference-accumulation", choices=("exact", "running"), default="exact", help=ACCUMULATION)
    add("--basic", action=on, default=True, help="also run the scored Wanda and SparseGPT with --pipeline basic")
    add("--profile", type=int, default=0, help="also profile wanda×lse and sparsegpt×uniform: top N")
    add("--layers", type=int, default=None, help=f"{SYNTHETIC} only: override the layer count")
    add("--note", default="", help="a free-text note for the results file (e.g. other load)")
    add("--out", type=Path, default=None, help="results path stem (default results/speed_<model>)")
    add("--render", type=Path, default=None, help="only re-render the .md (and targets) from a results .json")
    add("--_worker", choices=("run", "reference"), help=argparse.SUPPRESS)
    add("--_payload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    synthetic = args.model == SYNTHETIC
    args.nsamples = args.nsamples or (4 if synthetic else 16)
    args.seqlen = args.seqlen or (128 if synthetic else 256)
    args.eval_tokens = args.eval_tokens or 4 * args.seqlen
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker:
        payload = json.loads(args._payload)
        print(MARK + json.dumps(worker_run(payload) if args._worker == "run" else worker_reference(payload)))
        return 0
    if args.render is not None:
        print(f"[speed] re-rendered {write_report(json.loads(args.render.read_text()), args.render.with_suffix(''))}")
        return 0
    started = time.perf_counter()
    label, spec = resolve_model(args.model, args.layers)
    command = "python benchmarks/speed.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {"model": label, "model_spec": spec, "command": command, "note": args.note}
    report["machine"] = machine_description(args.threads)
    print(f"[speed] {label}: dense forward ×{args.dense_repeats} and the per-layer LSE check", flush=True)
    first = dense_forward(args, spec, None if args.lse_layers < 0 else args.lse_layers)
    nsamples, seqlen = first["calibration_shape"]
    report["setup"] = {"parameters": first["parameters"], "nsamples": nsamples, "seqlen": seqlen}
    report["setup"] |= {k: getattr(args, k) for k in ("batch_size", "sparsity", "eval_tokens", "threads")}
    report["setup"]["reference_accumulation"] = args.reference_accumulation
    if "lse_layers" in first:
        report["lse_layers"] = {"summary": summarise_lse(first["lse_layers"]), "layers": first["lse_layers"]}
    runs, references, profiles = run_grid(args, spec)
    print(f"[speed] dense forward ×{args.dense_repeats} again", flush=True)
    report["dense"] = dense_summary(first, dense_forward(args, spec, None))
    report["runs"] = [run_entry(key, run, report["dense"]) for key, run in runs.items()]
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
    md_path = write_report(report, args.out if args.out is not None else RESULTS_DIR / f"speed_{label}")
    print(f"[speed] wrote {md_path} and its .json", flush=True)
    for target in report["targets"]:
        print(f"[speed] {target['status']}: {target['text']}", flush=True)
    bad = [name for name, r in report.get("reference", {}).items() if not r["masks_identical"]]
    if bad and args.reference_accumulation == "exact":
        print(f"[speed] FAILED: masks differ from the reference for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

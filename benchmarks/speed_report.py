"""The speed benchmark's targets and its Markdown report, from the results that ``speed.py`` measured.

    .venv/bin/python benchmarks/speed.py --render benchmarks/results/speed_smollm2-135m.json

Every table goes through the one shared writer, :func:`lsa_framework.report.tables.markdown_table`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lsa_framework.report.tables import markdown_table
from lsa_framework.storage.atomic import write_text

TARGET_WHOLE_RUN = 2.5
TARGET_SPARSEGPT_SPEEDUP = 1.5
UNITS = ("wall", "cpu")
DENSE = ("forward", "layers")  # the whole model's forward, and its decoder layers alone
MACHINE = ["nproc", "CPU", "RAM", "torch", "torch threads", "transformers", "python", "load avg (start → end)"]
LSE_KEYS = ("forward_{}_s", "gram_{}_s", "lse_{}_s", "lse_over_forward_{}", "gram_lse_over_forward_{}")
REFERENCE = [
    *("pruner", "masks identical", "linears (mismatching)", "max abs ΔW", "pruning ours s", "pruning ref s"),
    *("speed-up pruning (wall / CPU)", "end to end ours s", "end to end ref s", "speed-up e2e (wall / CPU)"),
    "peak RSS to pruning ours / ref MB",
]


def run_name(pruner: str, scorer: str, pipeline: str = "sequential") -> str:
    return f"{pruner} × {scorer}" + ("" if pipeline == "sequential" else f" ({pipeline})")


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, str]]:
    runs, s = {r["name"]: r for r in report["runs"]}, (report.get("lse_layers") or {}).get("summary")
    targets = []

    def target(met: bool | str | None, text: str) -> None:
        status = met if isinstance(met, str) else "not measured" if met is None else "met" if met else "not met"
        targets.append({"status": status, "text": text})

    if "wanda × lse" in runs:
        r, layers = runs["wanda × lse"]["ratios"], runs["wanda × lse"]["ratios_layers"]
        ok = [r[f"whole_{u}"] <= TARGET_WHOLE_RUN for u in UNITS]
        target(
            all(ok) or ("borderline" if any(ok) else False),
            f"a whole LSA+Wanda run (scoring + allocation + pruning) ≤ {TARGET_WHOLE_RUN}× one dense forward: "
            f"{r['whole_wall']:.2f}× wall, {r['whole_cpu']:.2f}× CPU (one forward includes the lm_head; against "
            f"the layers-only forward {layers['whole_wall']:.2f}× wall, {layers['whole_cpu']:.2f}× CPU).",
        )
        if s and s["layers"] == report["dense"]["num_layers"]:  # free LSE, free masks: 3 layer forwards + a Gram
            d = report["dense"]
            floor = [(3 * d["layers"][u] + s[f"gram_{u}_s"]) / d["forward"][u] for u in UNITS]
            targets[-1]["text"] += (
                f" Floor of this structure with free LSE scoring and free masks (three layers-only forwards plus "
                f"the Gram accumulation of the scoring pass): {floor[0]:.2f}× wall, {floor[1]:.2f}× CPU."
            )
    else:
        target(None, "the LSA+Wanda run (wanda × lse) was not in the grid.")
    if basic := runs.get(run_name("wanda", "lse", "basic")):
        r = basic["ratios"]
        target(
            max(r["whole_wall"], r["whole_cpu"]) <= TARGET_WHOLE_RUN,
            f"the same with `--pipeline basic` (Wanda from the dense model's statistics, kept by the scoring pass: "
            f"one forward in all, masks not the papers'): {r['whole_wall']:.2f}× wall, {r['whole_cpu']:.2f}× CPU.",
        )
    if sgpt := (report.get("reference") or {}).get("sparsegpt"):
        wall, cpu = sgpt["pruning_speedup_wall"], sgpt["pruning_speedup_cpu"]
        target(
            sgpt["masks_identical"] and min(wall, cpu) >= TARGET_SPARSEGPT_SPEEDUP,
            f"the SparseGPT path ≥ {TARGET_SPARSEGPT_SPEEDUP}× faster than the per-projection reference at identical "
            f"masks: masks identical = {sgpt['masks_identical']}, pruning pass {wall:.2f}× wall / {cpu:.2f}× CPU, "
            f"end to end {sgpt['e2e_speedup_wall']:.2f}× wall / {sgpt['e2e_speedup_cpu']:.2f}× CPU. The reference "
            "runs a transcription of the original `fasterprune` per projection; the framework shares one Gram, one "
            "factor and one column loop per input group (q/k/v, gate/up) and selects without full sorts.",
        )
    else:
        target(None, "SparseGPT vs reference: run with --reference.")
    if s:
        calibration = f"{report['setup']['nsamples']}×{report['setup']['seqlen']}"
        target(
            s["layers_lse_below_forward_cpu"] == s["layers"] and s["lse_over_forward_wall"] < 1,
            f"LSE scoring of a layer costs less than that layer's forward: LSE / forward = "
            f"{s['lse_over_forward_wall']:.2f} wall, {s['lse_over_forward_cpu']:.2f} CPU summed over layers; below "
            f"1 (CPU) in {s['layers_lse_below_forward_cpu']} of {s['layers']} layers (max "
            f"{s['max_layer_ratio_cpu']:.2f}); with the Gram accumulation, {s['gram_lse_over_forward_cpu']:.2f} CPU. "
            f"The LSE search does not grow with the calibration ({calibration} here), the forward does.",
        )
    return targets


def render_markdown(report: dict[str, Any]) -> str:
    m, dense, setup, runs = report["machine"], report["dense"], report["setup"], report["runs"]
    stages = list(dict.fromkeys(stage for r in runs for stage in r["timings_s"]))  # in the order they ran

    def table(headers: list[str], rows: list[list[Any]]) -> str:  # text first, numbers to the right
        return markdown_table(headers, rows, "l" + "r" * (len(headers) - 1))

    def per_stage(key: str) -> str:
        return table(["run", *stages], [[r["name"], *(r[key].get(s) for s in stages)] for r in runs])

    machine = [m["nproc"], m["cpu_model"], f"{m['ram_gib']} GiB", m["torch"], m["torch_threads"], m["transformers"]]
    machine += [m["python"], f"{m['loadavg_start']} → {m.get('loadavg_end')}"]
    dense_rows = [[r["when"], *(r[f"{w}_{u}_s"] for w in DENSE for u in UNITS)] for r in dense["repeats"]]
    dense_rows.append(["**median**", *(dense[w][u] for w in DENSE for u in UNITS)])
    run_rows = [
        [r["name"], *(r["timings_s"].get(s) for s in stages), r["total_wall_s"], r["peak_rss_mb"], r["ppl"]]
        for r in runs
    ]
    ratio_keys = [(s, u) for u in UNITS for s in ("scoring", "pruning", "whole")]
    parts = [
        f"# Speed benchmark — {report['model']}",
        "Produced by `benchmarks/speed.py` (`make bench` runs it with its defaults). Command:",
        f"```\n{report['command']}\n```",
        "## Machine",
        markdown_table(MACHINE, [machine], "l" * len(MACHINE)),
        *([f"**Note.** {report['note']}"] if report.get("note") else []),
        f"Setup: {setup['parameters'] / 1e6:.0f}M parameters, calibration {setup['nsamples']}×{setup['seqlen']} "
        f"tokens in batches of {setup['batch_size']}, sparsity {setup['sparsity']}, allocator `layer`, "
        f"evaluation = perplexity on {setup['eval_tokens']} tokens, float32, CPU.",
        "## One plain dense forward over the calibration tokens",
        "`model(input_ids)` in batches of the run's batch size under `no_grad` (logits included); 'layers only' = "
        "the embedding and every decoder layer called as the model calls it (no final norm, no lm_head), the least "
        "a pass must run. Measured in this process before and after the runs; the medians are the denominators.",
        table(["when", *(f"{w} {u} s" for w in ("forward", "layers-only") for u in ("wall", "CPU"))], dense_rows),
        "## Runs: wall seconds per stage and peak RSS",
        "Each run is one `lsa_framework.prune` call in its own process, output in a temporary folder (`pruning` "
        "includes the per-layer checkpoint writes of `--output`). Times and peak RSS (the process's maximum "
        "resident set after each stage, cumulative, MB) are the run's own, from its run.json.",
        table(["run", *stages, "total", "peak RSS MB", "ppl"], run_rows),
        "CPU seconds per stage (all threads of the run's process):",
        per_stage("cpu_s"),
        "Peak RSS (MB) after each stage:",
        per_stage("peak_rss_by_stage"),
        "## Ratios to one dense forward",
        "Pass time / median dense forward time. 'whole' = scoring + allocation + pruning (the passes over the "
        "calibration set; load, evaluation and save excluded).",
        table(
            ["run", *(f"{s} ({u.replace('cpu', 'CPU')})" for s, u in ratio_keys)],
            [[r["name"], *(r["ratios"][f"{s}_{u}"] for s, u in ratio_keys)] for r in runs],
        ),
    ]
    if lse := report.get("lse_layers"):
        s = lse["summary"]
        parts += [
            "## LSE scoring of a layer vs that layer's forward",
            "Per decoder layer, in this process: its plain forward over the calibration batch, the same forward "
            "with the Gram hooks, and the LSE scorer on its linears from that Gram. 'gram' = with hooks − plain.",
            table(
                ["", "forward", "gram (hooks)", "LSE", "LSE / forward", "(gram + LSE) / forward"],
                [[f"sum over layers, {u.replace('cpu', 'CPU')} s", *(s[k.format(u)] for k in LSE_KEYS)] for u in UNITS],
            ),
            f"Layers where LSE (CPU) < forward (CPU): {s['layers_lse_below_forward_cpu']} of {s['layers']}; "
            f"per-layer LSE/forward (CPU) from {s['min_layer_ratio_cpu']:.2f} to {s['max_layer_ratio_cpu']:.2f}.",
        ]
    if refs := report.get("reference"):
        rows = []
        for name, r in refs.items():
            rows.append([name, "**yes**" if r["masks_identical"] else "**NO**"])
            rows[-1] += [f"{r['linears']} ({r['linears_with_mismatch']})", f"{r['max_abs_weight_diff']:.2e}"]
            rows[-1] += [r["pruning_ours_wall_s"], r["pruning_ref_wall_s"], _pair(r, "pruning_speedup")]
            rows[-1] += [r["e2e_ours_wall_s"], r["e2e_ref_wall_s"], _pair(r, "e2e_speedup")]
            rows[-1] += [f"{r['ours_peak_rss_mb']:.0f} / {r['ref_peak_rss_mb']:.0f}"]
        parts += [
            "## Reference (per-projection) implementation vs the framework",
            "`benchmarks/reference_prune.py`: one forward hook and one statistic per projection (q, k, v each build "
            "their own Gram / scaler_row, so do gate and up), each projection's mask by transcriptions of the "
            "originals' code (`reference_kernels.py`), every layer re-run for the next inputs; statistics "
            f"accumulation `{setup['reference_accumulation']}`. Same model, calibration and per-layer sparsities "
            "as the framework's uniform run, in its own process. Speed-up = reference time / framework time (>1: "
            "the framework is faster). End to end = load + calibration + (scoring + allocation +) pruning.",
            table(REFERENCE, rows),
        ]
    if profiles := report.get("profiles"):
        parts.append("## Profiles (cProfile, separate runs; top functions by own time)")
        for name, passes in profiles.items():
            for stage, rows in passes.items():
                if sum(r["tottime"] for r in rows) >= 0.05:  # not e.g. the data-free scoring of `uniform`
                    table_rows = [[f"`{r['function']}`", r["calls"], r["tottime"], r["cumtime"]] for r in rows]
                    parts += [
                        f"**{name}, {stage} pass**",
                        table(["function", "calls", "own s", "cumulative s"], table_rows),
                    ]
    parts += ["## Targets", "\n".join(f"- **{t['status']}** — {t['text']}" for t in report["targets"])]
    return "\n\n".join(parts) + "\n"


def _pair(r: dict[str, Any], key: str) -> str:
    return f"{r[f'{key}_wall']:.2f} / {r[f'{key}_cpu']:.2f}"


def write_report(report: dict[str, Any], out: Path) -> Path:
    """The targets into ``report``, then ``out``.json and ``out``.md; returns the .md."""
    report["targets"] = evaluate_targets(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out.with_name(out.name + ".json"), json.dumps(report, indent=2) + "\n")
    write_text(out.with_name(out.name + ".md"), render_markdown(report))
    return out.with_name(out.name + ".md")

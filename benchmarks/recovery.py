"""Cost and effect of recovery after pruning: time per step, peak memory, loss before and after.

    .venv/bin/python benchmarks/recovery.py smollm2       # default model, magnitude 50%, 20 steps of 4 x 256
    .venv/bin/python benchmarks/recovery.py synthetic-1b  # random 1.1B Llama, LoRA only, a few steps

Each configuration runs in a fresh subprocess (``one``), so its peak RSS is its own. The model is
pruned in the script with a plain rule (the 50% smallest |W| of each row of every linear but the
head) so that the measurement does not depend on the engine. Training windows are calibration
windows of the built-in corpus; the loss before/after is on held-out evaluation windows.

Results: ``benchmarks/results/recovery_<model>.md`` and ``.json`` (``render FILE.json`` rewrites the ``.md``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lsa_framework.storage.atomic import write_text

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
MARK = "@@LSAF_RECOVERY_JSON@@"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _prune_rows(model: Any, sparsity: float) -> dict[str, Any]:
    """Zero the ``sparsity`` smallest |W| of each row of every linear but the head; count dense zeros first."""
    import torch

    from lsa_framework.recovery.masks import find_linear, linear_names

    natural = 0
    with torch.no_grad():
        for name in linear_names(model):
            w = find_linear(model, name).weight
            natural += int((w == 0).sum())
            k = int(w.shape[1] * sparsity)
            w.scatter_(1, w.abs().topk(k, dim=1, largest=False).indices, 0)
    return {"dense_exact_zeros": natural}


def _synthetic_1b() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this process."""
    import torch

    torch.set_num_threads(spec["threads"])
    from lsa_framework.recovery import lora, masked
    from lsa_framework.recovery.masks import mask_hashes, masks_from_zeros
    from lsa_framework.recovery.training import TrainConfig

    out: dict[str, Any] = {"spec": spec}
    began = time.perf_counter()
    if spec["model"] == "smollm2-135m":
        from lsa_framework.data.builtin import AustenDataset
        from lsa_framework.data.windows import sample_windows
        from lsa_framework.model.loading import load_model

        loaded = load_model("smollm2-135m")
        model, tokenizer = loaded.model, loaded.tokenizer
        data = AustenDataset()
        windows = sample_windows(tokenizer, data.documents("calibration"), spec["nsamples"], spec["seqlen"], seed=0)
        held_out = sample_windows(tokenizer, data.documents("evaluation"), spec["eval_windows"], spec["seqlen"], seed=1)
    else:
        model = _synthetic_1b()
        generator = torch.Generator().manual_seed(0)
        windows = torch.randint(0, 32000, (spec["nsamples"], spec["seqlen"]), generator=generator)
        held_out = None
    model.eval()
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["load_s"] = round(time.perf_counter() - began, 1)
    out.update(_prune_rows(model, spec["sparsity"]))
    masks_before = mask_hashes(masks_from_zeros(model))

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        assert held_out is not None
        losses = [
            float(m(input_ids=held_out[i : i + 4], labels=held_out[i : i + 4]).loss) for i in range(0, len(held_out), 4)
        ]
        return {"loss": sum(losses) / len(losses)}

    method = spec["method"]
    default_lr = masked.DEFAULT_LR if method == "masked" else lora.DEFAULT_LR
    config = TrainConfig(
        steps=spec["steps"],
        batch_size=spec["batch"],
        lr=spec.get("lr") or default_lr,
        schedule="cosine",
        warmup_steps=min(2, spec["steps"] - 1),
        autocast=spec["autocast"],
        gradient_checkpointing=spec["gradient_checkpointing"],
        seed=0,
    )
    stamps: list[float] = []
    cpu_stamps: list[float] = []
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        losses.append(loss)
        print(f"  step {step}: loss {loss:.4f} ({stamps[-1] - start:.1f} s)", file=sys.stderr, flush=True)

    out["rss_before_training_mb"] = _rss_mb()
    out["peak_before_training_mb"] = _peak_mb()
    evaluator = evaluate if held_out is not None else None
    start = time.perf_counter()
    if method == "masked":
        result = masked.recover_masked(model, windows, config, on_step=on_step, evaluate=evaluator)
    else:
        options = lora.LoraOptions(mask_delta=spec["mask_delta"])
        result = lora.recover_lora(model, windows, config, options=options, on_step=on_step, evaluate=evaluator)
    # The loop's own clock (evaluation excluded) gives the first step; the stamps give the others.
    first = result.training.seconds - (stamps[-1] - stamps[0])
    steps = [first] + [b - a for a, b in itertools.pairwise(stamps)]
    out["step_s"] = [round(s, 2) for s in steps]
    out["first_step_s"] = round(steps[0], 2)
    out["median_step_s"] = round(statistics.median(steps[1:] if len(steps) > 1 else steps), 2)
    cpu_steps = [b - a for a, b in itertools.pairwise(cpu_stamps)]
    out["median_step_cpu_s"] = round(statistics.median(cpu_steps), 2) if cpu_steps else None
    out["peak_rss_mb"] = _peak_mb()
    out["train_losses"] = [round(x, 4) for x in losses]
    out["eval_before"] = result.training.eval_before
    out["eval_after_training_forward"] = result.training.eval_after
    if held_out is not None:
        recovered = result.model
        recovered.eval()
        with torch.no_grad():
            out["eval_after_merged"] = evaluate(recovered)
    out["autocast"] = result.training.autocast
    out["sparsity"] = result.sparsity
    out["new_zeros"] = result.new_zeros
    out["masks_identical"] = mask_hashes(masks_from_zeros(result.model)) == masks_before == result.mask_sha256
    return out


def _run_one(spec: dict[str, Any]) -> dict[str, Any]:
    print(
        f"== {spec['method']} autocast={spec['autocast']} mask_delta={spec.get('mask_delta')} "
        f"gc={spec['gradient_checkpointing']} steps={spec['steps']}",
        file=sys.stderr,
        flush=True,
    )
    proc = subprocess.run(
        [sys.executable, __file__, "one", json.dumps(spec)], stdout=subprocess.PIPE, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    return {"spec": spec, "error": f"exit code {proc.returncode}"}


def _configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    common = {"threads": args.threads, "sparsity": 0.5, "seqlen": args.seqlen, "batch": args.batch}
    if args.target == "smollm2":
        common |= {"model": "smollm2-135m", "nsamples": 64, "eval_windows": 8, "gradient_checkpointing": False}
        steps, short = args.steps, args.bf16_steps
        return [
            {**common, "method": "masked", "autocast": "off", "steps": steps},
            {**common, "method": "lora", "mask_delta": True, "autocast": "off", "steps": steps},
            {**common, "method": "lora", "mask_delta": False, "autocast": "off", "steps": steps},
            {**common, "method": "masked", "autocast": "bf16", "steps": short},
            {**common, "method": "lora", "mask_delta": True, "autocast": "bf16", "steps": short},
        ]
    common |= {"model": "synthetic-1b", "nsamples": 16, "eval_windows": 0, "method": "lora", "autocast": "off"}
    return [
        {**common, "mask_delta": True, "gradient_checkpointing": True, "steps": args.steps},
        {**common, "mask_delta": True, "gradient_checkpointing": False, "steps": args.steps},
    ]


def _row(r: dict[str, Any]) -> str:
    s = r["spec"]
    if "error" in r:
        return f"| {s['method']} | {s['autocast']} | {s['steps']} | {r['error']} |" + " |" * 9
    kind = s["method"] if s["method"] == "masked" else ("lora (masked Δ)" if s["mask_delta"] else "lora (plain Δ)")
    gc = " +gc" if s["gradient_checkpointing"] else ""

    def loss(key: str) -> str:
        value = r.get(key)
        return f"{value['loss']:.3f}" if value else "–"

    return (
        f"| {kind}{gc} | {r['autocast']} | {s['steps']} | {r['first_step_s']} | {r['median_step_s']} | "
        f"{r['median_step_cpu_s']} | {r['rss_before_training_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
        f"{loss('eval_before')} | {loss('eval_after_training_forward')} | {loss('eval_after_merged')} | "
        f"{r['train_losses'][0]:.3f} → {r['train_losses'][-1]:.3f} | {r['masks_identical']} |"
    )


def render(record: dict[str, Any]) -> str:
    runs = record["runs"]
    spec = runs[0]["spec"]
    label = spec["model"]
    if label == "smollm2-135m":
        data = (
            f"Training windows: {spec['nsamples']} calibration windows of the built-in corpus. Loss: mean "
            f"cross-entropy on {spec['eval_windows']} held-out windows of the evaluation book; 'training forward' "
            "is the model as trained (adapters unmerged), 'merged' the sparse model that is saved."
        )
    else:
        data = f"Random weights and {spec['nsamples']} windows of random tokens: time and memory only, no evaluation."
    first = next((r for r in runs if "error" not in r), {})
    lines = [
        f"# Recovery after pruning: {label}",
        "",
        f"`{record['command']}`",
        "",
        f"{first.get('parameters', 0) / 1e6:.1f}M parameters, pruned {spec['sparsity']:.0%} per row by |W| "
        f"(every linear but the head; the dense linears had {first.get('dense_exact_zeros', 0)} exact zeros). "
        f"Batch {spec['batch']} x {spec['seqlen']} tokens, cosine schedule with 2 warmup steps, default learning "
        f"rates, {spec['threads']} torch thread(s). Median step: steps 2 onwards (the first includes warm-up). "
        f"RSS before training: after loading and pruning. {data}",
        "",
        "| method | autocast | steps | first step s | median step s | median step CPU s | RSS before training MB | "
        "peak RSS MB | loss before | after (training forward) | after (merged) | training loss | masks identical |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        *[_row(r) for r in runs],
        "",
    ]
    if record.get("note"):
        lines += [record["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", choices=["smollm2", "synthetic-1b", "one", "render"])
    parser.add_argument("spec", nargs="?", help="(one) the configuration as JSON; (render) the results JSON file")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--bf16-steps", type=int, default=2, help="steps of the bf16 runs (slow without AVX512-BF16)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.target == "one":
        print(MARK + json.dumps(measure(json.loads(args.spec))), flush=True)
        return
    if args.target == "render":
        path = Path(args.spec)
        write_text(path.with_suffix(".md"), render(json.loads(path.read_text())))
        return
    if args.steps is None:
        args.steps = 20 if args.target == "smollm2" else 3
    if args.batch is None:
        args.batch = 4 if args.target == "smollm2" else 1
    sys.path.insert(0, str(HERE))
    from speed import machine_description

    results = [_run_one(spec) for spec in _configs(args)]
    label = "smollm2-135m" if args.target == "smollm2" else "synthetic-1b"
    RESULTS_DIR.mkdir(exist_ok=True)
    command = "python benchmarks/recovery.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = {"command": command, "machine": machine_description(args.threads), "note": args.note, "runs": results}
    write_text(RESULTS_DIR / f"recovery_{label}.json", json.dumps(record, indent=1) + "\n")
    text = render(record)
    write_text(RESULTS_DIR / f"recovery_{label}.md", text)
    print(text)


if __name__ == "__main__":
    main()

"""What the benchmarks share: the synthetic 1.2B model, the machine description and the base run config.

from common import RESULTS_DIR, base_config, machine_description, resolve_model
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYNTHETIC = "synthetic-1b"
SYNTHETIC_SEED = 0
#: TinyLlama-like shape; the vocabulary comes from the default model's tokenizer (49152 tokens).
SYNTHETIC_SHAPE: dict[str, Any] = dict(
    hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4
)


def synthetic_model_dir(layers: int | None = None) -> Path:
    """A Llama of ~1.2B parameters (22 layers) with random weights (fixed seed), saved once in the cache
    in 1 GB shards, as large models ship. ``layers`` overrides the depth (cached in its own folder)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lsa_framework.data import cache_dir
    from lsa_framework.model.loading import default_model_dir, save_model_atomically

    target = cache_dir() / (SYNTHETIC if layers is None else f"{SYNTHETIC}-L{layers}")
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    config = LlamaConfig(
        **SYNTHETIC_SHAPE,
        vocab_size=max(32000, len(tokenizer)),
        num_hidden_layers=22 if layers is None else layers,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(SYNTHETIC_SEED)
    model = LlamaForCausalLM(config).float()  # random init, std = initializer_range (0.02)
    save_model_atomically(model, tokenizer, target, max_shard_size="1GB")
    return target


def resolve_model(name: str, layers: int | None) -> tuple[str, str]:
    """(label for the results, spec for RunConfig.model)."""
    if name == SYNTHETIC:
        return (SYNTHETIC if layers is None else f"{SYNTHETIC}-L{layers}"), str(synthetic_model_dir(layers))
    if layers is not None:
        raise SystemExit(f"--layers only applies to --model {SYNTHETIC}.")
    path = Path(name).expanduser()
    return (path.name if path.is_dir() else name), name


def machine_description(threads: int | None) -> dict[str, Any]:
    import torch
    import transformers

    def first(path: str, key: str) -> str:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), "0")

    return {
        "nproc": len(os.sched_getaffinity(0)),  # not `nproc`, which honours OMP_NUM_THREADS
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "ram_gib": round(int(first("/proc/meminfo", "MemTotal:").split()[0]) / 1024**2, 1),
        "torch": torch.__version__,
        "torch_threads": threads if threads else torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def base_config(args: argparse.Namespace, spec: str, **overrides: Any) -> Any:
    """The RunConfig of a benchmark run: layer allocation, builtin calibration, perplexity on a few tokens."""
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
        "eval_dense": False,  # evaluating the dense model is no stage of the pruning being measured
        "threads": args.threads,
    }
    return RunConfig(**{**values, **overrides})

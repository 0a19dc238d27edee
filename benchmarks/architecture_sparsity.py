"""Realised sparsity of every tested family × configuration (issue 14's report table).

    .venv/bin/python benchmarks/architecture_sparsity.py

The same tiny random models and the same three configurations as ``tests/model/test_architectures.py``
(the default LSA run at 60%, OWL at block granularity at 60%, SparseGPT 2:4), on 2-layer models of each
dense family and the three MoE families. The realised sparsity is counted here from the saved weights
of every decoder layer (experts as their fused 3-D parameters, the router left out), not taken from the
run's own report, and the table also shows the report's figure so the two can be compared. The test
asserts the same things; this script only writes them down for the note and the docs.

Results: ``benchmarks/results/architecture_sparsity.md``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run
from lsa_framework.storage.atomic import write_text
from tests.architectures import EXPECTED, FAMILIES, MOE_FAMILIES, save_tiny_model
from tests.conftest import make_text

CONFIGURATIONS = {
    "LSA (lse, layer, wanda) 0.6": {"sparsity": 0.6},
    "OWL, block, wanda 0.6": {"scorer": "owl", "allocator": "block", "sparsity": 0.6},
    "SparseGPT 2:4": {"scorer": "uniform", "pruner": "sparsegpt", "pattern": "2:4"},
}
MOE_CONFIGURATIONS = {
    "LSA (lse, expert, wanda) 0.6": {"sparsity": 0.6, "allocator": "expert"},
    "OWL, expert, wanda 0.6": {"scorer": "owl", "allocator": "expert", "sparsity": 0.6},
    "SparseGPT 2:4": {"scorer": "uniform", "pruner": "sparsegpt", "pattern": "2:4"},
}
ROUTERS = ("gate", "router", "shared_expert_gate")


def counted_sparsity(folder: Path, layers_path: str) -> float:
    """Zeros over weights of every prunable matrix in the decoder layers, from the saved model."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    zeros = total = 0
    for layer in model.get_submodule(layers_path):
        for name, param in layer.named_parameters():
            leaf = name.split(".")[-2] if name.endswith(".weight") else name.split(".")[-1]
            if param.dim() < 2 or leaf in ROUTERS or "norm" in name:
                continue
            zeros += int((param == 0).sum())
            total += param.numel()
    return zeros / total


def main() -> None:
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        text.write_text("\n\n".join(make_text(20, 400, seed=1)) + "\n")
        for family in FAMILIES:
            folder = Path(tmp) / family
            save_tiny_model(family, folder)
            configurations = MOE_CONFIGURATIONS if family in MOE_FAMILIES else CONFIGURATIONS
            for label, options in configurations.items():
                out = Path(tmp) / f"{family}-{len(rows)}"
                values = {"model": str(folder), "calibration": str(text), "nsamples": 4, "seqlen": 32,
                          "batch_size": 2, "eval": ["sparsity"], "eval_dense": False, "output": str(out),
                          **options}  # fmt: skip
                result = run(build_config(values))
                counted = counted_sparsity(out / "model", EXPECTED[family].layers)
                rows.append((family, label, counted, float(result.metrics["sparsity"])))
                print(f"{family:10s} {label:30s} counted {counted:.4f} reported {result.metrics['sparsity']:.4f}")
    lines = [
        "# Realised sparsity per family and configuration",
        "",
        "`benchmarks/architecture_sparsity.py`: tiny random 2-layer models of `tests/architectures.py`,",
        "4 × 32 calibration tokens. *counted*: zeros over weights of the decoder layers' prunable matrices",
        "in the saved model; *reported*: run.json's `sparsity`.",
        "",
        "| family | configuration | counted | reported |",
        "| --- | --- | ---: | ---: |",
        *(f"| {f} | {c} | {counted:.4f} | {reported:.4f} |" for f, c, counted, reported in rows),
    ]
    target = Path(__file__).parent / "results" / "architecture_sparsity.md"
    write_text(target, "\n".join(lines) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

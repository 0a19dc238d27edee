"""The contract with a pruning run: the masks read back from its saved model hash to its run.json record.

Depends on the engine's ``build_config``/``run``; adapt the two calls when the engine changes."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM

from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run
from lsa_framework.recovery.masks import linear_names, mask_hashes, masks_from_zeros


def test_masks_from_zeros_hash_to_the_run_json_record(tiny_run_values, tmp_path):
    out = tmp_path / "out"
    values = {**tiny_run_values, "eval": [], "eval_opts": {}, "pruner": "wanda", "sparsity": 0.6, "output": out}
    run(build_config(values))
    recorded = json.loads((out / "run.json").read_text())["mask_sha256"]
    saved = AutoModelForCausalLM.from_pretrained(out / "model")
    assert sorted(linear_names(saved)) == sorted(recorded)
    assert mask_hashes(masks_from_zeros(saved)) == recorded

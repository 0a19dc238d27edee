"""The same config and seed give identical masks; another seed gives other calibration, other masks."""

from __future__ import annotations

from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run


def test_same_seed_same_masks_other_seed_other_masks(tiny_run_values):
    values = {
        **tiny_run_values,
        "scorer": "lse",
        "pruner": "sparsegpt",
        "sparsity": 0.6,
        "eval": ["sparsity"],
        "eval_opts": {},
    }
    first = run(build_config(values))
    second = run(build_config(values))
    assert len(first.mask_hashes) == 21  # 3 layers × 7 linears
    assert first.mask_hashes == second.mask_hashes
    assert [u.sparsity for u in first.units] == [u.sparsity for u in second.units]
    other = run(build_config({**values, "seed": 1}))
    assert other.mask_hashes != first.mask_hashes

"""Every scorer × allocator through the real engine on a tiny GQA Llama: exact global sparsity."""

from __future__ import annotations

import pytest

from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run


@pytest.mark.parametrize("allocator", ["layer", "block", "projection"])
@pytest.mark.parametrize("scorer", ["uniform", "lse", "owl", "dlp"])
def test_allocation_hits_target_exactly(tiny_run_values, scorer, allocator):
    target = 0.6
    config = build_config(
        {
            **tiny_run_values,
            "scorer": scorer,
            "allocator": allocator,
            "pruner": "wanda",
            "sparsity": target,
            "eval": ["sparsity"],
            "eval_opts": {},
        }
    )
    result = run(config)
    units = result.units
    total = sum(u.numel for u in units)
    allocated = sum(u.sparsity * u.numel for u in units) / total
    assert allocated == pytest.approx(target, abs=1e-4)
    assert all(0.0 <= u.sparsity <= 0.99 for u in units)
    # Realised per unit differs from allocated only by Wanda's per-row rounding, int(in · s).
    for unit in units:
        narrowest_input = 64  # the narrowest input of the tiny model (hidden size)
        assert abs(unit.realised - unit.sparsity) <= 1.0 / narrowest_input, unit.name
    realised_global = sum(u.realised * u.numel for u in units) / total
    assert realised_global == pytest.approx(result.metrics["sparsity"], abs=1e-12)
    assert realised_global == pytest.approx(target, abs=1.0 / 64)
    if scorer == "uniform":
        assert {round(u.sparsity, 12) for u in units} == {target}
    else:
        assert max(u.sparsity for u in units) - min(u.sparsity for u in units) > 0.01

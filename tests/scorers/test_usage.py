"""The usage scorer: at ``--allocator expert`` the experts the router used least get the most sparsity."""

from __future__ import annotations

import itertools

import pytest
import torch

from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run
from lsa_framework.scorers.usage import UsageScorer
from lsa_framework.types import LinearStats, Unit
from tests.moe_models import save_moe

torch.set_num_threads(1)


def test_usage_orders_experts_by_their_routed_tokens(tmp_path, tiny_text_file):
    folder = save_moe("mixtral", tmp_path / "mixtral")
    values = {"model": str(folder), "calibration": str(tiny_text_file), "nsamples": 8, "seqlen": 64,
              "scorer": "usage", "allocator": "expert", "pruner": "wanda", "sparsity": 0.5,
              "eval": ["sparsity"]}  # fmt: skip
    result = run(build_config(values))
    tokens = result.extra["routing"]["tokens_per_expert"]["scoring"]
    experts = [(n, tokens[f"layer.{i}"][e]) for i in range(2) for e in range(4) for n in [f"layer.{i}.experts.{e}"]]
    sparsity = {u.name: u.sparsity for u in result.units}
    scores = {u.name: u.score for u in result.units}
    for name, count in experts:
        assert scores[name] == count  # both expert matrices read the same tokens
    assert scores["layer.0.attention"] == 8 * 64  # attention reads every token
    by_tokens = sorted(experts, key=lambda item: item[1])
    assert sparsity[by_tokens[0][0]] == max(sparsity[n] for n, _ in experts)  # least used: most sparsity
    for (low, n_low), (high, n_high) in itertools.pairwise(by_tokens):
        assert sparsity[low] >= sparsity[high] - 1e-12 or n_low == n_high
    total = sum(u.numel for u in result.units)
    assert sum(u.sparsity * u.numel for u in result.units) / total == pytest.approx(0.5, abs=1e-4)


def test_usage_weights_linears_by_size():
    class Info:
        def __init__(self, name: str, numel: int) -> None:
            self.name, self.numel = name, numel

    unit = Unit("u", 0, (Info("a", 30), Info("b", 10)))  # type: ignore[arg-type]
    stats = {"a": LinearStats(4, 100), "b": LinearStats(4, 20)}
    assert UsageScorer().score(unit, stats) == pytest.approx((30 * 100 + 10 * 20) / 40)
    scores = UsageScorer().finish({"u": 1.0}, 0.5, "expert")
    assert scores.higher_is_important and scores.spread == 0.1

"""The engine side of the ``search`` capability: a candidate allocation is pruned from the dense weights
with the dense statistics whatever was applied before, its fitness is the KL divergence from the dense
model computed directly on the same calibration windows, and the model is dense after a search."""

from __future__ import annotations

import pytest
import torch

from lsa_framework.config import build_config
from lsa_framework.engine.observer import Observer
from lsa_framework.engine.plugins import resolve_plugins
from lsa_framework.engine.search import CandidateModel, KLFitness
from lsa_framework.engine.session import KeptStats, ScoringJob, Session
from lsa_framework.pruners.masks import wanda_mask
from lsa_framework.types import Pattern, contract_problems


@pytest.fixture
def session_and_plugins(tiny_run_values):
    config = build_config({**tiny_run_values, "scorer": "dlp", "allocator": "block", "sparsity": 0.6})
    plugins = resolve_plugins(config)
    session = Session(config, plugins.dataset, Observer())
    session.load()
    session.calibrate()
    return session, plugins


def test_candidates_and_kl_fitness_against_direct_computation(session_and_plugins) -> None:
    session, plugins = session_and_plugins
    layout = session.layout
    units = plugins.allocator.units(layout)
    kept = KeptStats(plugins.pruner.needs)
    session.score([ScoringJob("dlp", plugins.scorer, units)], kept)
    session.keep_dense()
    dense = {k: v.clone() for k, v in session._dense.items()}
    candidates = CandidateModel(layout, units, plugins.pruner, kept.by_layer, session._dense, Pattern())
    fitness = KLFitness(session.model, candidates, session.tokenizer, session.dataset.documents("calibration"), 64,
                        None, torch.device("cpu"))  # fmt: skip

    first = {u.name: 0.3 + 0.1 * (i % 5) for i, u in enumerate(units)}
    second = {u.name: 0.7 - 0.05 * (i % 3) for i, u in enumerate(units)}
    assert fitness(dict.fromkeys(first, 0.0), 100, 5) == pytest.approx(0.0, abs=1e-7)
    fitness(first, 100, 5)
    value = fitness(second, 100, 5)

    # the same candidate pruned directly from the dense weights, with the statistics of a plain dense forward
    expected = {}
    for unit in units:
        for info in unit.linears:
            stats = kept.by_layer[unit.layer][info.name]
            mask = wanda_mask(dense[info.name], stats.require("input_sq_norm"), second[unit.name], Pattern(), "exact")
            expected[info.name] = dense[info.name].masked_fill(mask, 0)
    for info in layout.all_linears():
        assert torch.equal(info.weight, expected[info.name])  # the order of candidates does not matter

    windows = fitness.windows(100, 5)
    assert windows.shape == (2, 64)  # ceil(100 / 64) windows of the calibration length
    with torch.no_grad():
        pruned = [torch.log_softmax(session.model(input_ids=w[None]).logits[0].float(), -1) for w in windows]
        for info in layout.all_linears():
            info.weight.copy_(dense[info.name])
        reference = [torch.log_softmax(session.model(input_ids=w[None]).logits[0].float(), -1) for w in windows]
    kl = sum(float((p.exp() * (p - q)).sum()) for p, q in zip(reference, pruned, strict=True)) / (2 * 64)
    assert value == pytest.approx(kl, rel=1e-5)


def test_search_leaves_the_model_dense(session_and_plugins) -> None:
    session, _ = session_and_plugins
    config = build_config({**session.config.model_dump(), "scorer": "evo", "allocator": "layer",
                           "scorer_opts": {"generations": 1, "offspring": 2, "tokens": [16, 32]}})  # fmt: skip
    plugins = resolve_plugins(config)
    units = plugins.allocator.units(session.layout)
    values = session.score([ScoringJob("evo", plugins.scorer, units)])["evo"]
    before = {info.name: info.weight.clone() for info in session.layout.all_linears()}
    allocation = session.allocate(plugins.scorer, plugins.allocator, units, values, config)
    searched = session.search(plugins.scorer, plugins.allocator, plugins.pruner, allocation, config)
    assert searched.search is not None and searched.search["generations"] == 1
    for info in session.layout.all_linears():
        assert torch.equal(info.weight, before[info.name])


def test_declared_capabilities_need_their_methods() -> None:
    class Broken:
        name = "broken"
        needs = frozenset()
        capabilities = frozenset({"search"})

    assert any("search" in p for p in contract_problems("scorers", Broken))

    class BrokenPruner:
        name = "broken"
        needs = frozenset()
        capabilities = frozenset({"prepare"})

    assert any("prepare" in p for p in contract_problems("pruners", BrokenPruner))

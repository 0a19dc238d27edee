"""The LSE, OWL and DLP scorer plugins on a fake GQA layout, through the shared mapping."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pluggy
import pytest
import torch
from pydantic import ValidationError

from lsa_framework import hookspecs, registry
from lsa_framework.allocators.granularity import BlockAllocator, LayerAllocator, ProjectionAllocator
from lsa_framework.allocators.mapping import finalize, map_scores
from lsa_framework.scorers import dlp, lse, owl
from lsa_framework.scorers.dlp import DlpOptions, DlpScorer
from lsa_framework.scorers.functions import lse_error
from lsa_framework.scorers.lse import LseOptions, LseScorer, default_beta
from lsa_framework.scorers.owl import OwlOptions, OwlScorer
from lsa_framework.types import Layout, LinearInfo, LinearStats, Scorer, Unit
from tests.fakes import fake_layout as shared_fake_layout

HIDDEN, KV, MLP = 32, 8, 64
ALLOCATORS = {"layer": LayerAllocator(), "block": BlockAllocator(), "projection": ProjectionAllocator()}


def fake_layout(num_layers: int = 3, scales: tuple[float, ...] | None = None, seed: int = 0) -> Layout:
    return shared_fake_layout(num_layers, HIDDEN, KV, MLP, scales, seed)


def fake_stats(layout: Layout, seed: int = 1, tokens: int = 96) -> dict[str, LinearStats]:
    """Statistics as the engine gathers them; linears of one input group share one input."""
    gen = torch.Generator().manual_seed(seed)
    by_group: dict[str, LinearStats] = {}
    stats = {}
    for info in layout.all_linears():
        if info.input_group not in by_group:
            cols = info.module.in_features
            mix = torch.randn(cols, cols, generator=gen) / cols**0.5 + torch.eye(cols)
            x = torch.randn(tokens, cols, generator=gen) @ mix  # 2 sequences of 48 tokens
            by_group[info.input_group] = LinearStats(
                nsamples=2, ntokens=tokens, input_sq_norm=(x**2).sum(0) / 2, gram=2.0 / 2 * x.T @ x
            )
        stats[info.name] = by_group[info.input_group]
    return stats


def run_scorer(
    scorer: Scorer, layout: Layout, granularity: str, target: float = 0.7
) -> tuple[list[Unit], Mapping[str, float], dict[str, float]]:
    """What the engine does: score each unit, finish, allocate."""
    stats = fake_stats(layout)
    allocator = ALLOCATORS[granularity]
    units = allocator.units(layout)
    values = {u.name: scorer.score(u, {i.name: stats[i.name] for i in u.linears}) for u in units}
    scores = scorer.finish(values, target, granularity)
    sizes = {u.name: u.numel for u in units}
    return units, scores.values, allocator.allocate(scores, sizes, target)


def test_plugins_register_and_follow_the_protocol() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm._lsaf_dists = {}  # type: ignore[attr-defined]
    for module in (lse, owl, dlp):
        pm.register(module)
    found = registry.collect("scorers", pm)
    assert {n: r.cls for n, r in found.items()} == {"lse": LseScorer, "owl": OwlScorer, "dlp": DlpScorer}
    for cls in (LseScorer, OwlScorer, DlpScorer):
        assert isinstance(cls(cls.Options()), Scorer)
    assert LseScorer.needs == {"gram"}
    assert OwlScorer.needs == DlpScorer.needs == {"input_sq_norm"}


def test_options() -> None:
    assert LseOptions() == LseOptions(group_size=128, ratio=0.5, beta=None)
    assert OwlOptions.model_validate({"lamda": 0.1, "M": 7}).lamda == 0.1
    assert DlpOptions.model_validate({"reduce": "mean"}).reduce == "mean"
    for bad in ({"ratio": 1.0}, {"ratio": 0.0}, {"group_size": -1}, {"beta": -0.1}, {"lambda": 0.1}):
        with pytest.raises(ValidationError):
            LseOptions.model_validate(bad)
    with pytest.raises(ValidationError):
        OwlOptions.model_validate({"lambda": 0.1})
    with pytest.raises(ValidationError):
        DlpOptions.model_validate({"reduce": "max"})


@pytest.mark.parametrize(
    ("target", "granularity", "beta"),
    [
        (0.1, "layer", 0.06),
        (0.2, "layer", 0.02),
        (0.3, "layer", 0.04),
        (0.4, "layer", 0.02),
        (0.5, "layer", 0.04),
        (0.6, "layer", 0.10),
        (0.7, "layer", 0.15),
        (0.8, "layer", 0.12),
        (0.9, "layer", 0.07),
        (0.55, "layer", 0.07),
        (0.05, "layer", 0.07),
        (0.7, "block", 0.07),
        (0.5, "projection", 0.07),
    ],
)
def test_lse_default_beta(target: float, granularity: str, beta: float) -> None:
    assert default_beta(target, granularity) == beta
    assert LseScorer(LseOptions()).finish({"a": 1.0}, target, granularity).spread == beta
    assert LseScorer(LseOptions(beta=0.2)).finish({"a": 1.0}, target, granularity).spread == 0.2


@pytest.mark.parametrize(("granularity", "count"), [("layer", 3), ("block", 6), ("projection", 21)])
@pytest.mark.parametrize("group_size", [16, 0])
def test_lse_scores_are_the_mean_error_of_the_units_linears(granularity: str, count: int, group_size: int) -> None:
    layout = fake_layout()
    stats = fake_stats(layout)
    units, values, sparsities = run_scorer(LseScorer(LseOptions(group_size=group_size)), layout, granularity)
    assert len(values) == count
    for unit in units:
        errors = [lse_error(i.module.weight, stats[i.name].require("gram"), group_size) for i in unit.linears]
        assert values[unit.name] == pytest.approx(float(np.mean(errors)), rel=1e-6)
    if granularity == "block":
        attention = layout.linears[0][:4]
        q_k_v_o = [lse_error(i.module.weight, stats[i.name].require("gram"), group_size) for i in attention]
        assert values["layer.0.attention"] == pytest.approx(sum(q_k_v_o) / 4, rel=1e-6)
    sizes = {u.name: u.numel for u in units}
    assert abs(sum(sparsities[n] * sizes[n] for n in sizes) / sum(sizes.values()) - 0.7) <= 1e-4


def wanda(info: LinearInfo, stats: Mapping[str, LinearStats]) -> np.ndarray:
    norm = stats[info.name].input_sq_norm
    assert norm is not None
    return (info.module.weight.detach().abs() * norm.sqrt()[None, :]).numpy().ravel()


@pytest.mark.parametrize("granularity", ["layer", "block", "projection"])
def test_owl_and_dlp_scores_match_a_direct_computation(granularity: str) -> None:
    layout = fake_layout()
    stats = fake_stats(layout)
    units, owl_values, _ = run_scorer(OwlScorer(OwlOptions(M=3.0)), layout, granularity)
    _, median_values, _ = run_scorer(DlpScorer(DlpOptions()), layout, granularity)
    _, mean_values, _ = run_scorer(DlpScorer(DlpOptions(reduce="mean")), layout, granularity)
    for unit in units:
        flat = np.concatenate([wanda(i, stats) for i in unit.linears]).astype(np.float64)
        lod = 100.0 * np.count_nonzero(flat > 3.0 * flat.mean()) / flat.size
        assert owl_values[unit.name] == pytest.approx(lod)
        assert median_values[unit.name] == pytest.approx(np.sort(flat)[(flat.size - 1) // 2], rel=1e-6)
        assert mean_values[unit.name] == pytest.approx(flat.mean(), rel=1e-5)


def test_more_error_means_more_sparsity_for_lse() -> None:
    # scaling a layer's weights by c scales its error by c²
    layout = fake_layout(scales=(2.0, 1.0, 3.0))
    _, values, sparsity = run_scorer(LseScorer(LseOptions(group_size=16)), layout, "layer")
    assert values["layer.1"] < values["layer.0"] < values["layer.2"]
    assert sparsity["layer.1"] < sparsity["layer.0"] < sparsity["layer.2"]
    assert sparsity["layer.2"] - sparsity["layer.1"] == pytest.approx(0.30)  # 2β, β = 0.15 at 70%


def test_higher_dlp_score_means_more_sparsity() -> None:
    layout = fake_layout(scales=(1.0, 3.0, 2.0))
    _, values, sparsity = run_scorer(DlpScorer(DlpOptions()), layout, "layer")
    assert values["layer.0"] < values["layer.2"] < values["layer.1"]
    assert sparsity["layer.0"] < sparsity["layer.2"] < sparsity["layer.1"]
    assert sparsity["layer.1"] - sparsity["layer.0"] == pytest.approx(0.30)


def test_more_outliers_mean_less_sparsity_for_owl() -> None:
    layout = fake_layout()
    with torch.no_grad():
        for layer, count in ((0, 20), (2, 60)):
            for info in layout.linears[layer]:
                info.module.weight.view(-1)[:count] = 100.0
    _, values, sparsity = run_scorer(OwlScorer(OwlOptions()), layout, "layer")
    assert values["layer.1"] < values["layer.0"] < values["layer.2"]
    assert sparsity["layer.1"] > sparsity["layer.0"] > sparsity["layer.2"]
    assert sparsity["layer.1"] - sparsity["layer.2"] == pytest.approx(0.16)


def test_monotone_through_the_mapping_at_projection_granularity() -> None:
    sizes = {"a": 4096, "b": 1024, "c": 8192}
    low, high = {"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 1.0}
    for scorer in (LseScorer(LseOptions()), DlpScorer(DlpOptions())):
        base = finalize(map_scores(scorer.finish(low, 0.5, "projection"), sizes, 0.5), sizes, 0.5)
        more = finalize(map_scores(scorer.finish(high, 0.5, "projection"), sizes, 0.5), sizes, 0.5)
        assert more["b"] > base["b"]
    owl_scorer = OwlScorer(OwlOptions())
    base = finalize(map_scores(owl_scorer.finish(low, 0.5, "projection"), sizes, 0.5), sizes, 0.5)
    more = finalize(map_scores(owl_scorer.finish(high, 0.5, "projection"), sizes, 0.5), sizes, 0.5)
    assert more["b"] < base["b"]

"""Per-expert statistics: the engine's single dense pass gives each expert exactly the sums over its routed tokens.

The reference routes the block input (captured in a plain forward of the whole model) with the block's own
router (``tests.moe_reference.route_experts``) and sums in plain torch: ``input_sq_norm`` = Σ x²/n and
``gram`` = 2/n Σ xᵀx over the tokens routed to the expert, n = the number of sequences, routing weights
not applied. Dense linears keep their statistics over all tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from lsa_framework.engine.expert_stats import RoutingLog, unrouted
from lsa_framework.engine.layer_calls import capture_activations
from lsa_framework.engine.passes import scoring_pass
from lsa_framework.engine.statistics import Gram, InputSqNorm
from lsa_framework.model import moe
from lsa_framework.model.discovery import discover_layout
from lsa_framework.scorers.functions import dlp_score, lse_error, outlier_ratio, wanda_metric
from lsa_framework.types import LinearStats
from tests.architectures import MOE_FAMILIES, tiny_model
from tests.moe_models import UNROUTED_EXPERT, make_moe
from tests.moe_reference import is_sparse_moe_block, route_experts

torch.set_num_threads(1)

SEQUENCES, SEQLEN, BATCH = 4, 32, 2


class RowCount:
    """A third-party statistic: how many rows it was given and the ``batch`` values it saw."""

    name: ClassVar[str] = "row_count"

    def __init__(self, in_features: int, device: Any) -> None:
        self.rows = 0
        self.batches: list[int] = []

    def add(self, x: torch.Tensor, batch: int) -> None:
        self.rows += x.shape[0]
        self.batches.append(batch)

    def result(self, nsamples: int, ntokens: int) -> torch.Tensor:
        return torch.tensor([float(self.rows), float(all(b == BATCH for b in self.batches))])


CLASSES = {"gram": Gram, "input_sq_norm": InputSqNorm, "row_count": RowCount}


def engine_stats(model: Any, ids: torch.Tensor) -> tuple[Any, dict[int, dict[str, LinearStats]]]:
    """The statistics of every layer from the engine's dense pass (batches of BATCH sequences)."""
    layout = discover_layout(model)
    acts = capture_activations(model, layout.stack, ids, BATCH, torch.device("cpu"))
    found: dict[int, dict[str, LinearStats]] = {}
    scoring_pass(layout, acts, frozenset(CLASSES), lambda i, s: found.__setitem__(i, s), classes=CLASSES)
    return layout, found


def block_inputs(model: Any, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    handles = [
        layer.mlp.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0]))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm", "eager"])
@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_each_expert_gets_the_statistics_of_its_routed_tokens(family: str, implementation: str, monkeypatch):
    """grouped_mm (the default) and batched_mm: the down inputs are read from the forward itself (recomputing
    them is made to fail); eager: recomputed from gate_up_proj[e]."""
    model = tiny_model(family, num_layers=2)
    model.set_experts_implementation(implementation)
    if implementation != "eager":
        monkeypatch.setattr(moe, "down_input", lambda *_a: (_ for _ in ()).throw(AssertionError("recomputed")))
    ids = torch.randint(0, 190, (SEQUENCES, SEQLEN), generator=torch.Generator().manual_seed(0))
    layout, stats = engine_stats(model, ids)
    inputs = block_inputs(model, ids)
    checked = 0
    for index, layer in enumerate(model.model.layers):
        if not is_sparse_moe_block(layer.mlp):
            continue
        with torch.no_grad():
            routing = route_experts(layer.mlp, inputs[index])
        by_key = {(i.expert, i.parameter): stats[index][i.name] for i in layout.linears[index] if i.expert is not None}
        for tokens in routing.experts:
            for parameter, x in (("gate_up_proj", tokens.gate_up_input), ("down_proj", tokens.down_input)):
                got = by_key[(tokens.expert, parameter)]
                n = len(tokens.token_index)
                assert (got.nsamples, got.ntokens) == (SEQUENCES, n)
                torch.testing.assert_close(got.input_sq_norm, (x**2).sum(0) / SEQUENCES, atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(got.gram, 2.0 / SEQUENCES * x.T @ x, atol=1e-5, rtol=1e-4)
                # a third-party statistic sees the routed rows, and batch = the sequences of each forward
                assert got["row_count"].tolist() == [float(n), 1.0]
                checked += 1
        attention = next(i for i in layout.linears[index] if i.projection == "q")
        assert stats[index][attention.name].ntokens == SEQUENCES * SEQLEN  # dense linears: every token
        assert "_apply_gate" not in vars(layer.mlp.experts)  # the wrapper is gone after the pass
    assert checked >= 8  # 4 experts x 2 matrices in every MoE layer


def test_routing_log_and_unrouted_experts_from_the_statistics():
    model = make_moe("mixtral", unrouted=True)
    ids = torch.randint(0, 190, (SEQUENCES, SEQLEN), generator=torch.Generator().manual_seed(0))
    layout, stats = engine_stats(model, ids)
    with torch.no_grad():
        routing = route_experts(model.model.layers[0].mlp, block_inputs(model, ids)[0])
    counts = [len(t.token_index) for t in routing.experts]
    assert counts[UNROUTED_EXPERT] == 0 and min(c for e, c in enumerate(counts) if e != UNROUTED_EXPERT) > 0

    log = RoutingLog()
    for index in stats:
        log.observe("scoring", layout.linears[index], stats[index])
    record = log.to_json()
    assert record["tokens_per_expert"]["scoring"]["layer.0"] == counts
    assert record["unrouted_experts"]["scoring"] == [f"layer.0.experts.{UNROUTED_EXPERT}"]
    assert sum(record["tokens_per_expert"]["scoring"]["layer.1"]) == 2 * SEQUENCES * SEQLEN  # top-2

    empty = unrouted(layout.linears[0], stats[0])
    assert sorted(i.name for i in empty) == [
        f"model.layers.0.mlp.experts.{UNROUTED_EXPERT}.down_proj",
        f"model.layers.0.mlp.experts.{UNROUTED_EXPERT}.gate_up_proj",
    ]
    for info in empty:
        got = stats[0][info.name]
        assert got.nsamples == SEQUENCES and got.ntokens == 0
        assert not got.gram.any() and not got.input_sq_norm.any()
        # scorers get finite values from the empty statistics (no division by zero)
        metric = wanda_metric(info.weight, got.input_sq_norm)
        for value in (outlier_ratio([metric]), dlp_score([metric]), lse_error(info.weight, got.gram, 16)):
            assert value == value and abs(value) < float("inf")

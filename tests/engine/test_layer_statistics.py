"""Statistics gathered at a decoder layer's input (``site = "layer_input"``): the built-in
``residual_energy`` equals the mean ‖h‖² of the hidden states the model feeds that layer (its
``output_hidden_states``), the first position of every window excluded; every linear of the layer sees it."""

from __future__ import annotations

import pytest
import torch

from lsa_framework.engine.layer_calls import capture_activations
from lsa_framework.engine.passes import scoring_pass
from lsa_framework.engine.statistics import gather_stats, statistic_classes
from lsa_framework.model.loading import load_model


def test_residual_energy_is_the_mean_squared_norm_of_each_layer_input(tiny_model_dir) -> None:
    loaded = load_model(str(tiny_model_dir), "float32")
    model, layout = loaded.model, loaded.layout()
    ids = torch.randint(2, 150, (6, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # hidden[i] enters layer i
    expected = [float(h[:, 1:].double().pow(2).sum(-1).mean()) for h in hidden[: layout.num_layers]]

    acts = capture_activations(model, layout.stack, ids, 4, None)  # two batches: 4 + 2 windows
    found: dict[int, dict] = {}
    needs = frozenset({"residual_energy", "input_sq_norm"})
    scoring_pass(layout, acts, needs, lambda i, stats: found.__setitem__(i, stats), classes=statistic_classes(needs))
    for index, linears in enumerate(layout.linears):
        values = {float(found[index][info.name].require("residual_energy")[0]) for info in linears}
        assert len(values) == 1  # one result for the whole layer
        assert values.pop() == pytest.approx(expected[index], rel=1e-5)
        assert found[index][linears[0].name].input_sq_norm is not None  # linear-input statistics still there


def test_a_layer_input_statistic_needs_the_layer(tiny_model_dir) -> None:
    loaded = load_model(str(tiny_model_dir), "float32")
    with (
        pytest.raises(ValueError, match="pass the layer"),
        gather_stats(loaded.layout().linears[0], {"residual_energy"}),
    ):
        pass

"""Every decoder layer is called with its own arguments, as the model itself calls it.

The hidden states the engine feeds each layer (chaining the layers with the recorded calls) must equal
``model(..., output_hidden_states=True).hidden_states`` for every layer, on every supported family —
Gemma 2/3 and Qwen2 mix sliding-window and full-attention layers (different masks; Gemma 3 also
different rotary tables), so replaying layer 0's call, as the engine once did, fails there."""

from __future__ import annotations

import pytest
import torch

from lsa_framework.engine.layer_calls import capture_activations, chain, layer_outputs, record_layer_calls
from lsa_framework.model.discovery import discover_layout
from tests.architectures import FAMILIES, MOE_FAMILIES, SLIDING_FAMILIES, tiny_model

DENSE = [f for f in FAMILIES if f not in MOE_FAMILIES]


def _ids(batch: int = 4, seqlen: int = 40) -> torch.Tensor:
    return torch.randint(0, 190, (batch, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", DENSE)
def test_chained_layers_reproduce_the_models_hidden_states(family: str):
    model = tiny_model(family, num_layers=3)
    layout = discover_layout(model)
    ids = _ids()
    with torch.no_grad():
        reference = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    acts = capture_activations(model, layout.stack, ids, batch_size=2, device=None)  # two batches
    seen = chain(layout.layers, acts)
    for index in range(layout.num_layers):
        fed = torch.cat(seen[index])
        assert torch.allclose(fed, reference[index], atol=1e-5, rtol=1e-5), f"layer {index}"


@pytest.mark.parametrize("family", [f for f in SLIDING_FAMILIES if f != "mistral"])
def test_replaying_the_first_layers_call_would_be_wrong(family: str):
    """The regression this engine fixes: mixed layer types get other masks / rotary tables."""
    model = tiny_model(family, num_layers=3)
    layout = discover_layout(model)
    ids = _ids(2, 40)
    batch = record_layer_calls(model, layout.stack, ids)
    acts = capture_activations(model, layout.stack, ids, batch_size=2, device=None)
    own = chain(layout.layers, acts)
    replay = type(acts)([batch.hidden], [[batch.calls[0]] for _ in layout.layers])
    replayed = [list(replay.hidden)]
    for index, layer in enumerate(layout.layers):
        replay.hidden = layer_outputs(layer, replay, index)
        replayed.append(list(replay.hidden))
    assert not torch.allclose(own[-1][0], replayed[-1][0], atol=1e-3)


def test_the_dry_pass_runs_no_layer():
    model = tiny_model("gemma3", num_layers=3)
    layout = discover_layout(model)
    calls = {"n": 0}

    def count(*_args):
        calls["n"] += 1

    handles = [layer.register_forward_pre_hook(count) for layer in layout.layers]
    try:
        batch = record_layer_calls(model, layout.stack, _ids(2, 40))
    finally:
        for handle in handles:
            handle.remove()
    assert calls["n"] == 0 and len(batch.calls) == 3
    assert list(layout.stack) == layout.layers  # the real layers are back in place


def test_gpt2_positional_cache_is_dropped():
    model = tiny_model("gpt2", num_layers=2)
    layout = discover_layout(model)
    batch = record_layer_calls(model, layout.stack, _ids(2, 16))
    assert batch.calls[0].args and batch.calls[0].args[0] is None  # the cache, passed second by position

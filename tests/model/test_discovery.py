"""Generic discovery finds, in every supported family, what the family's own module tree and forward say.

The expectations (``tests.architectures.EXPECTED``) were measured independently of the discovery code:
the layer stack by path, attention/MLP by the modules' classes, and input groups by hooking every linear
of layer 0 and comparing the tensors they receive in one forward of the whole model."""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from lsa_framework.errors import UnsupportedArchitectureError
from lsa_framework.model.discovery import discover_layout
from tests.architectures import EXPECTED, FAMILIES, MOE_FAMILIES, tiny_model

DENSE = [f for f in FAMILIES if f not in MOE_FAMILIES]


@pytest.mark.parametrize("family", DENSE)
def test_layout_matches_the_family(family: str):
    model = tiny_model(family, num_layers=2)
    expected = EXPECTED[family]
    layout = discover_layout(model)
    assert layout.layers == list(model.get_submodule(expected.layers))
    prefix = f"{expected.layers}.0."
    first = layout.linears[0]
    relative = {info.name.removeprefix(prefix): info for info in first}
    assert sorted(n for n, i in relative.items() if i.block == "attention") == sorted(expected.attention)
    assert sorted(n for n, i in relative.items() if i.block == "mlp") == sorted(expected.mlp)
    groups: dict[str, list[str]] = {}
    for name, info in relative.items():
        groups.setdefault(info.input_group, []).append(name)
    assert sorted(sorted(g) for g in groups.values()) == sorted(sorted(g) for g in expected.groups)
    assert len({info.projection for info in first}) == len(first)  # projection names are unique in a layer
    for layer in layout.linears:  # every layer's groups are its own
        assert all(info.input_group.startswith(f"{info.layer}.") for info in layer)


@pytest.mark.parametrize("family", DENSE)
def test_weights_are_out_by_in_views_of_the_model(family: str):
    model = tiny_model(family, num_layers=1)
    for info in discover_layout(model).all_linears():
        x = torch.randn(3, info.in_features)
        module = info.module
        expected = module(x) - (module.bias if getattr(module, "bias", None) is not None else 0)
        assert torch.allclose(x @ info.weight.T, expected, atol=1e-5), info.name
        assert info.transposed == isinstance(module, Conv1D)
        with torch.no_grad():
            info.weight[0, 0] = 0.0  # a write through the view reaches the model's parameter
        assert float(module.weight[0, 0].detach()) == 0.0  # [0, 0] of W and of Wᵀ are one entry


def test_projection_names_are_the_familiar_ones():
    layout = discover_layout(tiny_model("llama", num_layers=1))
    assert [i.projection for i in layout.linears[0]] == ["q", "k", "v", "o", "gate", "up", "down"]
    gpt2 = discover_layout(tiny_model("gpt2", num_layers=1))
    assert [i.projection for i in gpt2.linears[0]] == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]


@pytest.mark.parametrize(("flag", "value"), [("has_bias", True), ("is_transposed", True), ("is_concatenated", False)])
def test_experts_in_an_unknown_fused_layout_are_refused_with_one_sentence(flag: str, value: bool):
    """GPT-OSS-like layouts (biased, transposed, interleaved [gate, up]) would be pruned wrongly: refused."""
    model = tiny_model("mixtral", num_layers=2)
    setattr(model.model.layers[1].mlp.experts, flag, value)
    expected = f"mixture of experts with fused experts with {flag}="
    with pytest.raises(UnsupportedArchitectureError, match=expected) as info:
        discover_layout(model)
    assert "\n" not in str(info.value) and "nearest supported family" in str(info.value)


def test_encoder_decoder_and_state_space_models_are_refused():
    from transformers import MambaConfig, MambaForCausalLM, T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))
    with pytest.raises(UnsupportedArchitectureError, match="T5ForConditionalGeneration is an encoder-decoder"):
        discover_layout(t5)
    mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4))
    with pytest.raises(UnsupportedArchitectureError, match="MambaForCausalLM is a state-space model"):
        discover_layout(mamba)

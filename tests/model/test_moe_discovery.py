"""Discovery of routed experts: each expert's two slices of the fused parameters, with the right orientation.

The reference is ``tests.moe_reference`` (plain torch, routing from the block's own router): recombining
every expert's output computed *through the layout's weights* must give the block's output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lsa_framework.model.discovery import discover_layout
from tests.architectures import MOE_FAMILIES, tiny_model
from tests.moe_reference import is_sparse_moe_block, route_experts, shared_expert_output

torch.set_num_threads(1)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_every_expert_has_a_gate_up_and_a_down_matrix_in_groups_of_their_own(family: str):
    model = tiny_model(family, num_layers=2)
    layout = discover_layout(model)
    for index, layer in enumerate(model.model.layers):
        linears = layout.linears[index]
        experts = [info for info in linears if info.expert is not None]
        if not is_sparse_moe_block(layer.mlp):
            assert experts == []  # Qwen3-MoE's dense layer: the Llama MLP, found generically
            assert {i.projection for i in linears if i.block == "mlp"} == {"gate", "up", "down"}
            continue
        count = layer.mlp.experts.gate_up_proj.shape[0]
        assert sorted((i.expert, i.parameter) for i in experts) == sorted(
            (e, p) for e in range(count) for p in ("gate_up_proj", "down_proj")
        )
        for info in experts:
            assert info.block == "mlp" and info.index == info.expert and info.module is layer.mlp.experts
            short = "gate_up" if info.parameter == "gate_up_proj" else "down"
            assert info.name == f"model.layers.{index}.mlp.experts.{info.expert}.{info.parameter}"
            assert info.projection == f"experts.{info.expert}.{short}"
            assert [i.name for i in linears if i.input_group == info.input_group] == [info.name]
            assert info.weight.data_ptr() == getattr(layer.mlp.experts, info.parameter)[info.expert].data_ptr()
        names = {i.name for i in linears}
        assert not any(n.endswith((".gate", "shared_expert_gate")) for n in names)  # routers are never pruned
        assert len({i.projection for i in linears}) == len(linears)
        shared = [i for i in linears if "shared_expert." in i.name]
        assert len(shared) == (3 if family == "qwen2_moe" else 0)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_layout_weights_recompute_the_block_output(family: str):
    """Through the (out, in) views: down(act(gate)·up) per expert, weighted and summed, plus the shared expert."""
    model = tiny_model(family, num_layers=2)
    layout = discover_layout(model)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        layer.mlp.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0]))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(torch.randint(0, 190, (2, 32), generator=torch.Generator().manual_seed(3)))
    for handle in handles:
        handle.remove()
    for index, layer in enumerate(model.model.layers):
        if not is_sparse_moe_block(layer.mlp):
            continue
        by_key = {(i.expert, i.parameter): i.weight for i in layout.linears[index] if i.expert is not None}
        hidden = seen[index]
        with torch.no_grad():
            routing = route_experts(layer.mlp, hidden)
            total = torch.zeros(hidden.reshape(-1, hidden.shape[-1]).shape)
            for tokens in routing.experts:
                gate, up = F.linear(tokens.gate_up_input, by_key[(tokens.expert, "gate_up_proj")]).chunk(2, dim=-1)
                out = F.linear(F.silu(gate) * up, by_key[(tokens.expert, "down_proj")])
                total.index_add_(0, tokens.token_index, tokens.weight[:, None] * out)
            shared = shared_expert_output(layer.mlp, hidden)
            if shared is not None:
                total += shared
            torch.testing.assert_close(total.reshape(hidden.shape), layer.mlp(hidden), atol=1e-6, rtol=1e-5)


def test_a_write_through_an_expert_view_reaches_the_fused_parameter():
    model = tiny_model("mixtral", num_layers=1)
    layout = discover_layout(model)
    info = next(i for i in layout.linears[0] if i.expert == 2 and i.parameter == "down_proj")
    with torch.no_grad():
        info.prunable.weight[1, 3] = 0.0
    assert float(model.model.layers[0].mlp.experts.down_proj.detach()[2, 1, 3]) == 0.0
    assert info.prunable.in_features == model.config.intermediate_size
    assert info.out_features == model.config.hidden_size

"""The per-expert view of ``tests.moe_reference`` is exactly what the MoE blocks compute.

PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_moe_reference.py
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.architectures import MOE_FAMILIES, tiny_model
from tests.moe_reference import expert_output, is_sparse_moe_block, route_experts, shared_expert_output

torch.set_num_threads(1)


def block_inputs(family: str, experts_implementation: str | None = None) -> list[tuple[Any, torch.Tensor]]:
    """Every sparse-MoE block of the family's model with the input it got in one forward."""
    model = tiny_model(family)
    if experts_implementation is not None:
        model.set_experts_implementation(experts_implementation)
    blocks = [m for m in model.modules() if is_sparse_moe_block(m)]
    seen: list[tuple[Any, torch.Tensor]] = []

    def keep(module: Any, args: tuple[Any, ...]) -> None:
        seen.append((module, args[0]))

    handles = [block.register_forward_pre_hook(keep) for block in blocks]
    ids = torch.randint(0, 190, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(ids, use_cache=False)
    for handle in handles:
        handle.remove()
    assert len(seen) == len(blocks) > 0
    return seen


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_experts_recombine_to_the_block_output(family: str) -> None:
    for block, hidden in block_inputs(family):
        with torch.no_grad():
            routing = route_experts(block, hidden)
            x = hidden.reshape(-1, hidden.shape[-1])
            total = torch.zeros_like(x)
            for tokens in routing.experts:
                total.index_add_(0, tokens.token_index, tokens.weight[:, None] * expert_output(block, tokens))
            shared = shared_expert_output(block, hidden)
            if shared is not None:
                total = total + shared
            torch.testing.assert_close(total.reshape(hidden.shape), block(hidden), atol=1e-6, rtol=1e-5)
        assert (shared is not None) == (family == "qwen2_moe")


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_routing_matches_softmax_then_top_k(family: str) -> None:
    """Computed by hand from the router weight: softmax over all experts, top-k, renormalised unless the
    family says not to (Qwen2-MoE here: norm_topk_prob=False; Mixtral always renormalises)."""
    for block, hidden in block_inputs(family):
        x = hidden.reshape(-1, hidden.shape[-1])
        routing = route_experts(block, x)
        k = block.gate.top_k
        probs = torch.softmax(x @ block.gate.weight.T, dim=-1)
        top, index = probs.topk(k, dim=-1)
        if getattr(block.gate, "norm_topk_prob", True):
            top = top / top.sum(-1, keepdim=True)
        assert torch.equal(routing.top_k_index, index)
        torch.testing.assert_close(routing.top_k_weights, top)
        counts = torch.zeros(x.shape[0], dtype=torch.long)
        for tokens in routing.experts:
            torch.testing.assert_close(tokens.gate_up_input, x[tokens.token_index])
            torch.testing.assert_close(tokens.weight, top[index == tokens.expert])
            counts.index_add_(0, tokens.token_index, torch.ones_like(tokens.token_index))
            assert tokens.down_input.shape == (tokens.token_index.numel(), block.experts.down_proj.shape[-1])
        assert torch.equal(counts, torch.full_like(counts, k))  # every token reaches exactly k experts


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_a_pre_hook_on_the_experts_sees_the_routing(family: str) -> None:
    """Hooking ``block.experts`` gives (hidden, top_k_index, top_k_weights): the per-expert tokens follow."""
    for block, hidden in block_inputs(family):
        got: list[tuple[Any, ...]] = []
        handle = block.experts.register_forward_pre_hook(lambda _m, args, got=got: got.append(args))
        with torch.no_grad():
            block(hidden)
        handle.remove()
        (x, index, weights), routing = got[0], route_experts(block, hidden)
        assert torch.equal(x, hidden.reshape(-1, hidden.shape[-1]))
        assert torch.equal(index, routing.top_k_index)
        assert torch.equal(weights, routing.top_k_weights)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_grouped_and_eager_experts_agree(family: str) -> None:
    """transformers picks the grouped-matmul experts by default, also on CPU; the per-expert loop is the same."""
    grouped = block_inputs(family)
    eager = block_inputs(family, "eager")
    assert grouped[0][0].experts.config._experts_implementation == "grouped_mm"
    for (block_g, hidden_g), (block_e, hidden_e) in zip(grouped, eager, strict=True):
        torch.testing.assert_close(hidden_g, hidden_e, atol=1e-6, rtol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(block_g(hidden_g), block_e(hidden_g), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_fused_experts_are_the_per_expert_checkpoint_tensors(family: str, tmp_path) -> None:
    """On disk each expert is three (out, in) matrices; in memory gate_up_proj[e] = [gate; up] and
    down_proj[e] = down. Mixtral names them w1 (gate), w3 (up), w2 (down) under block_sparse_moe."""
    from safetensors.torch import load_file

    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    disk = load_file(tmp_path / "model.safetensors")
    names = {"gate": "w1", "up": "w3", "down": "w2"} if family == "mixtral" else {}
    moe = "block_sparse_moe" if family == "mixtral" else "mlp"
    for index, layer in enumerate(model.model.layers):
        if not is_sparse_moe_block(layer.mlp):
            assert f"model.layers.{index}.mlp.gate_proj.weight" in disk  # Qwen3-MoE's dense layer keeps its names
            continue
        experts = layer.mlp.experts
        inner = experts.down_proj.shape[-1]
        for e in range(experts.gate_up_proj.shape[0]):
            prefix = f"model.layers.{index}.{moe}.experts.{e}."

            def tensor(role: str, prefix: str = prefix) -> torch.Tensor:
                return disk[prefix + names.get(role, role + "_proj") + ".weight"]

            assert torch.equal(experts.gate_up_proj[e, :inner], tensor("gate"))
            assert torch.equal(experts.gate_up_proj[e, inner:], tensor("up"))
            assert torch.equal(experts.down_proj[e], tensor("down"))
        assert torch.equal(layer.mlp.gate.weight, disk[f"model.layers.{index}.{moe}.gate.weight"])

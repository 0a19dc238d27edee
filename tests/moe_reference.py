"""Plain-torch reference for what each expert of a transformers sparse-MoE block sees.

A pruner that treats every expert as its own pair of linears needs, per expert, exactly the tokens the router
sent to it: their hidden states (the input of the expert's gate/up projection) and ``act(gate) * up`` of those
tokens (the input of its down projection). transformers 5 stores the experts as fused 3-D parameters
(``experts.gate_up_proj`` (E, 2I, H), ``experts.down_proj`` (E, H, I), both (out, in) per expert) and, by
default, runs them through a grouped matmul, so there is no per-expert module to hook. This module recomputes
the per-expert inputs from the block's own router, which is what a hook on ``block.experts`` (forward pre-hook:
``hidden_states (T, H), top_k_index (T, k), top_k_weights (T, k)``) would also give.

Supported: Mixtral, Qwen2-MoE (shared expert with a sigmoid gate) and Qwen3-MoE: blocks with children ``gate``
(a top-k router returning ``(logits, top_k_weights, top_k_index)``) and ``experts`` (concatenated [gate; up],
no bias, not transposed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ExpertTokens:
    """What one expert computes on in one forward of the block."""

    expert: int
    token_index: torch.Tensor  # (n,) rows of the block input flattened to (tokens, hidden)
    weight: torch.Tensor  # (n,) the router's weight of this expert for each of those tokens
    gate_up_input: torch.Tensor  # (n, H): those tokens' hidden states
    down_input: torch.Tensor  # (n, I): act(gate) * up for those tokens


@dataclass(frozen=True)
class MoeRouting:
    """The router's decision for every token and the per-expert view of it."""

    logits: torch.Tensor  # (T, E) router logits, before softmax
    top_k_weights: torch.Tensor  # (T, k) weights the block multiplies expert outputs by
    top_k_index: torch.Tensor  # (T, k) chosen experts
    experts: list[ExpertTokens]


def is_sparse_moe_block(module: torch.nn.Module) -> bool:
    """A block whose experts are fused 3-D parameters under ``experts`` and whose router is ``gate``."""
    experts = getattr(module, "experts", None)
    gate_up = getattr(experts, "gate_up_proj", None)
    return (
        hasattr(module, "gate")
        and isinstance(gate_up, torch.Tensor)
        and gate_up.ndim == 3
        and isinstance(getattr(experts, "down_proj", None), torch.Tensor)
    )


def _check_layout(experts: Any) -> None:
    layout = {
        "has_gate": True,
        "has_bias": False,
        "is_transposed": False,
        "is_concatenated": True,
    }
    for attribute, expected in layout.items():
        if getattr(experts, attribute, expected) != expected:
            raise NotImplementedError(f"experts with {attribute}={not expected} are not covered by this reference")


def route_experts(block: Any, hidden_states: torch.Tensor) -> MoeRouting:
    """Per expert: the tokens routed to it, their weights, and the inputs of its two projections.

    ``hidden_states`` is the block's input, (batch, seq, hidden) or (tokens, hidden); tokens are numbered
    in the flattened order the block itself uses.
    """
    if not is_sparse_moe_block(block):
        raise TypeError(f"{type(block).__name__} is not a sparse-MoE block with fused experts")
    experts = block.experts
    _check_layout(experts)
    x = hidden_states.reshape(-1, hidden_states.shape[-1])
    logits, top_k_weights, top_k_index = block.gate(x)
    per_expert = []
    for e in range(experts.gate_up_proj.shape[0]):
        token_index, slot = torch.where(top_k_index == e)
        tokens = x[token_index]
        gate, up = F.linear(tokens, experts.gate_up_proj[e]).chunk(2, dim=-1)
        per_expert.append(
            ExpertTokens(
                expert=e,
                token_index=token_index,
                weight=top_k_weights[token_index, slot],
                gate_up_input=tokens,
                down_input=experts.act_fn(gate) * up,
            )
        )
    return MoeRouting(logits=logits, top_k_weights=top_k_weights, top_k_index=top_k_index, experts=per_expert)


def expert_output(block: Any, tokens: ExpertTokens) -> torch.Tensor:
    """The expert's down projection of its down input, before the routing weight."""
    return F.linear(tokens.down_input, block.experts.down_proj[tokens.expert])


def shared_expert_output(block: Any, hidden_states: torch.Tensor) -> torch.Tensor | None:
    """Qwen2-MoE's always-on expert, scaled by its sigmoid gate; None for blocks without one."""
    shared = getattr(block, "shared_expert", None)
    if shared is None:
        return None
    x = hidden_states.reshape(-1, hidden_states.shape[-1])
    out = shared(x)
    gate = getattr(block, "shared_expert_gate", None)
    return out if gate is None else torch.sigmoid(gate(x)) * out

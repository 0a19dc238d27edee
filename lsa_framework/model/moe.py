"""Routed experts stored as fused 3-D parameters (transformers 5): where they are and what each one reads.

    lsaf run --model ./mixtral-like --allocator expert --pruner wanda   # Mixtral, Qwen2-MoE, Qwen3-MoE, ...

transformers 5 keeps the experts of a sparse-MoE block in one module (``block.experts``) with two
parameters, ``gate_up_proj`` (E, 2I, H) — per expert the gate rows, then the up rows — and ``down_proj``
(E, H, I). Slice ``[e]`` of either is an (out, in) matrix like an ``nn.Linear`` weight, so each expert
contributes two prunable matrices: ``experts.{e}.gate_up`` (input: the hidden states of the tokens routed
to e) and ``experts.{e}.down`` (input: act(gate)·up of those tokens). No per-expert module is called
(the default ``grouped_mm`` implementation runs all experts in one kernel, on CPU too), so the tokens of
expert e are read from the experts module's own arguments, ``(hidden (T, H), top_k_index (T, k),
top_k_weights (T, k))``: the rows t with e in ``top_k_index[t]``.

The router (``gate``) and a shared expert's sigmoid gate are never pruned; a shared expert (Qwen2-MoE)
is a plain MLP of ``nn.Linear`` and is found by generic discovery.

Only the layout measured on transformers 5.24 is accepted: concatenated [gate; up], not transposed, no
biases, no post-expert norm (``use_experts_implementation``'s flags). Other fused layouts (GPT-OSS:
interleaved, transposed, biased) are refused with one sentence rather than pruned wrongly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from lsa_framework.types import LinearInfo

#: The fused layout this module understands: use_experts_implementation's flag → the value it must have.
SUPPORTED_FLAGS = {
    "has_gate": True,
    "has_bias": False,
    "is_transposed": False,
    "is_concatenated": True,
    "has_post_expert_norm": False,
}
#: Names of 3-D parameters that mark fused experts (also in layouts we refuse).
FUSED_NAMES = ("gate_up_proj", "down_proj", "up_proj", "w1", "w2", "w3")


def is_fused_experts(module: torch.nn.Module) -> bool:
    """A module holding experts as 3-D parameters (whatever their layout)."""
    return any(p.dim() == 3 and n in FUSED_NAMES for n, p in module.named_parameters(recurse=False) if p is not None)


def layout_problem(experts: torch.nn.Module) -> str | None:
    """Why lsaf cannot prune these fused experts, or None when it can."""
    gate_up = getattr(experts, "gate_up_proj", None)
    down = getattr(experts, "down_proj", None)
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor)):
        return "fused experts without both gate_up_proj and down_proj"
    for flag, expected in SUPPORTED_FLAGS.items():
        if getattr(experts, flag, expected) != expected:
            return f"fused experts with {flag}={not expected}"
    shapes = f"fused experts of shapes {tuple(gate_up.shape)} and {tuple(down.shape)} (not (E, 2I, H) and (E, H, I))"
    if gate_up.dim() != 3 or down.dim() != 3:
        return shapes
    E, two_i, H = gate_up.shape
    if two_i % 2 or tuple(down.shape) != (E, H, two_i // 2):
        return shapes
    return None


def experts_modules(layer: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """``(path inside the layer, module)`` of every fused-experts module of a decoder layer."""
    for path, module in layer.named_modules():
        if path and is_fused_experts(module):
            yield path, module


def expert_linears(layer: torch.nn.Module, prefix: str, index: int) -> list[LinearInfo]:
    """Two :class:`LinearInfo` per routed expert of decoder layer ``index`` (named under ``prefix``):
    ``{path}.{e}.gate_up_proj`` and ``{path}.{e}.down_proj``, each in an input group of its own."""
    found: list[LinearInfo] = []
    for path, experts in experts_modules(layer):
        for e in range(num_experts(experts)):
            for parameter, short in (("gate_up_proj", "gate_up"), ("down_proj", "down")):
                found.append(
                    LinearInfo(
                        name=f"{prefix}.{index}.{path}.{e}.{parameter}",
                        layer=index,
                        block="mlp",
                        projection=f"experts.{e}.{short}",
                        input_group=f"{index}.{path}.{e}.{short}",
                        module=experts,
                        parameter=parameter,
                        index=e,
                        expert=e,
                    )
                )
    return found


def num_experts(experts: Any) -> int:
    return int(experts.gate_up_proj.shape[0])


def routing_order(top_k_index: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, list[int]]:
    """The (token, slot) choices flattened and stably sorted by expert, and the count of each expert.

    One sort of the T·k choices instead of one comparison of all of them per expert.
    """
    choices = top_k_index.reshape(-1)
    order = torch.sort(choices, stable=True).indices
    counts = torch.bincount(choices, minlength=num_experts)[:num_experts].tolist()
    return order, counts


def routed_tokens(top_k_index: torch.Tensor, num_experts: int) -> list[torch.Tensor]:
    """Per expert, the (ascending) rows of the flattened tokens routed to it; an expert is chosen at most
    once per token (top-k indices are distinct), so no row repeats."""
    order, counts = routing_order(top_k_index, num_experts)
    k = top_k_index.shape[-1] if top_k_index.dim() > 1 else 1
    return list(torch.split(order // k, counts))


#: Experts implementations that call ``experts._apply_gate`` once on the gate/up output of every routed
#: (token, slot) row, and the order of those rows: ``grouped_mm`` sorts them by expert, ``batched_mm``
#: keeps the flattened ``top_k_index`` order (transformers 5.24, ``integrations/moe.py``).
GATED_ROW_ORDER = {"grouped_mm": "by_expert", "batched_mm": "by_slot"}


def implementation(experts: Any) -> str | None:
    return getattr(getattr(experts, "config", None), "_experts_implementation", None)


def gated_rows(experts: Any, gated: torch.Tensor, top_k_index: torch.Tensor) -> list[torch.Tensor] | None:
    """Per expert, the rows of ``gated`` (what ``_apply_gate`` returned in one forward: act(gate)·up of every
    routed row) that belong to it; None when the implementation's row order is not known."""
    layout = GATED_ROW_ORDER.get(str(implementation(experts)))
    if layout is None or gated.dim() != 2 or gated.shape[0] != top_k_index.numel():
        return None
    order, counts = routing_order(top_k_index, num_experts(experts))
    return list((gated if layout == "by_expert" else gated[order]).split(counts))


def down_input(experts: Any, expert: int, tokens: torch.Tensor) -> torch.Tensor:
    """act(gate)·up of ``tokens`` for one expert: what its down projection reads, in the model's dtype
    (recomputed; used where the implementation's own activations cannot be read, e.g. ``eager``)."""
    gate_up = F.linear(tokens, experts.gate_up_proj[expert])
    apply_gate = getattr(experts, "_apply_gate", None)
    if apply_gate is not None:
        return torch.as_tensor(apply_gate(gate_up))
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.as_tensor(experts.act_fn(gate) * up)


def experts_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden (T, H), top_k_index (T, k))`` from the arguments of an experts module's forward."""
    values = list(args)
    names = ("hidden_states", "top_k_index")
    for position, name in enumerate(names):
        if position >= len(values):
            values.append(kwargs[name])
    return values[0], values[1]

"""Per-expert statistics from the tokens the router sent to each expert, in the same pass as the dense ones.

    lsaf run --model ./mixtral-like --scorer owl --allocator expert --pruner wanda

Routed experts have no module of their own (see :mod:`lsa_framework.model.moe`), so hooks on each
experts module read ``(hidden, top_k_index)``, split the tokens by expert, and feed

* expert e's ``gate_up`` group the hidden states of the tokens routed to e, and
* expert e's ``down`` group act(gate)·up of those tokens: read where the experts implementation computes
  it for all routed rows at once (``grouped_mm``, the default, and ``batched_mm`` call ``_apply_gate``
  once), or recomputed from ``gate_up_proj[e]`` otherwise (``eager``).

Every registered statistic (``gram``, ``input_sq_norm``, third-party ones) gets these rows through its
usual ``add(x, batch)``; ``batch`` is the number of sequences of the forward (counted by a pre-hook on the
decoder layer), so ``nsamples`` is the same n as for the dense linears and an expert's statistics are
exactly what a dense linear would gather if its input were zero on every token not routed to it.

**Routing weights do not scale the inputs** (the decision, and why): Wanda and SparseGPT minimise the
error of a matrix's own output, ‖WX − ŴX‖, on the inputs it really receives; an expert receives its
tokens unscaled and the block multiplies the expert's *output* by the routing weight afterwards. For the
gate/up matrix no input scaling reproduces that (act(gate)·up is not linear in its input). For the down
matrix, scaling its inputs by w_t would turn the objective into the block-output error Σ_t w_t²‖ΔW a_t‖²,
but then the two matrices of one expert would optimise different objectives, and with Qwen2-MoE's
unnormalised top-k weights (≈1/E) the statistics would shrink by w² against every dense linear. So both
matrices use the plain routed inputs. How much an expert is used still shows in its statistics (fewer
tokens, smaller sums), which scorers at ``--allocator expert`` see.

**Experts that no calibration token reached**: their statistics are zero (``ntokens == 0``). Scorers get
them as they are (finite: zero norms and Grams); a pruner that needs statistics would see no data, so
such a matrix is pruned by magnitude instead (|W|, one threshold per matrix, or N:M by |W|) at its unit's
sparsity, and run.json lists it under ``routing.magnitude_fallback``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lsa_framework.model import moe
from lsa_framework.pruners.masks import magnitude_mask
from lsa_framework.types import LinearInfo, LinearStats, Pattern


class _Sequences:
    """How many sequences the current forward of the decoder layer carries."""

    def __init__(self) -> None:
        self.value = 1

    def hook(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor):
            self.value = int(hidden.shape[0]) if hidden.dim() == 3 else 1


def hook_experts(groups: Mapping[str, Sequence[LinearInfo]], accumulators: Mapping[str, Any], layer: Any) -> list[Any]:
    """One pre-hook per experts module among ``groups`` feeding each expert's accumulators (``add_tokens``)
    with its routed rows; plus a pre-hook on ``layer`` (if given) counting sequences. Returns the handles."""
    by_module: dict[int, tuple[torch.nn.Module, dict[int, dict[str, Any]]]] = {}
    for group, members in groups.items():
        first = members[0]
        if first.expert is None or group not in accumulators:
            continue
        _, per_expert = by_module.setdefault(id(first.module), (first.module, {}))
        per_expert.setdefault(first.expert, {})[first.parameter] = accumulators[group]
    if not by_module:
        return []
    sequences = _Sequences()
    handles: list[Any] = []
    if layer is not None:
        handles.append(layer.register_forward_pre_hook(sequences.hook, with_kwargs=True))
    handles.extend(_ExpertsTap(module, per_expert, sequences) for module, per_expert in by_module.values())
    return handles


class _ExpertsTap:
    """The hooks of one experts module during one gather; ``remove()`` takes them all off.

    A pre-hook keeps the forward's ``(hidden, top_k_index)``; the experts implementations that call
    ``_apply_gate`` once on every routed row (``grouped_mm``, ``batched_mm``) have it wrapped to keep that
    result, the down projections' very inputs; the forward hook then feeds every expert's accumulators.
    Where the implementation's activations cannot be read (``eager``, or an unexpected call), the down
    inputs are recomputed from ``gate_up_proj[e]``: the same values, one more gate/up product.
    """

    def __init__(self, module: Any, per_expert: dict[int, dict[str, Any]], sequences: _Sequences) -> None:
        self.module, self.per_expert, self.sequences = module, per_expert, sequences
        self.call: tuple[torch.Tensor, torch.Tensor] | None = None
        self.gated: list[torch.Tensor] = []
        self.handles = [
            module.register_forward_pre_hook(self.before, with_kwargs=True),
            module.register_forward_hook(self.after),
        ]
        wants_down = any("down_proj" in accumulators for accumulators in per_expert.values())
        original: Any = getattr(type(module), "_apply_gate", None)
        self.patched = wants_down and original is not None and moe.implementation(module) in moe.GATED_ROW_ORDER
        if self.patched:

            def apply_gate(gate_up_out: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = original(module, gate_up_out)
                self.gated.append(out.detach())
                return out

            module._apply_gate = apply_gate  # an instance attribute shadows the class's method

    def before(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden, top_k_index = moe.experts_call(args, kwargs)
        # (tokens, hidden) and (tokens, k), as every block here passes them; flattened in case one does not
        self.call = (
            hidden.detach().reshape(-1, hidden.shape[-1]),
            top_k_index.detach().reshape(-1, top_k_index.shape[-1]),
        )
        self.gated = []

    def after(self, module: Any, _args: tuple[Any, ...], _output: Any) -> None:
        assert self.call is not None
        x, top_k_index = self.call
        rows = moe.routed_tokens(top_k_index, moe.num_experts(module))
        down = moe.gated_rows(module, self.gated[0], top_k_index) if len(self.gated) == 1 else None
        batch = self.sequences.value
        with torch.no_grad():
            for expert, accumulators in self.per_expert.items():
                tokens = x[rows[expert]]
                if "gate_up_proj" in accumulators:
                    accumulators["gate_up_proj"].add_tokens(tokens, batch)
                if "down_proj" in accumulators:
                    inputs = down[expert] if down is not None else moe.down_input(module, expert, tokens)
                    accumulators["down_proj"].add_tokens(inputs, batch)
        self.call, self.gated = None, []

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        if self.patched:
            self.module.__dict__.pop("_apply_gate", None)


# --- what the run does with the routing ------------------------------------------------------------------


def unrouted(linears: Sequence[LinearInfo], stats: Mapping[str, LinearStats]) -> list[LinearInfo]:
    """The expert matrices among ``linears`` whose statistics saw no token."""
    return [i for i in linears if i.expert is not None and i.name in stats and stats[i.name].ntokens == 0]


def prune_by_magnitude(
    linears: Sequence[LinearInfo], sparsity: Mapping[str, float], pattern: Pattern
) -> dict[str, torch.Tensor]:
    """The data-free fallback for matrices without calibration tokens: magnitude masks, applied in place."""
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for info in linears:
            if info.name not in sparsity:
                continue
            mask = magnitude_mask(info.weight, sparsity[info.name], pattern)
            info.weight.masked_fill_(mask.to(info.weight.device), 0)
            masks[info.name] = mask
    return masks


class RoutingLog:
    """The routing of the calibration tokens, per pass and MoE layer, for run.json's ``routing``.

    ``tokens_per_expert[pass]["layer.i"]`` is the number of calibration tokens the router sent to each
    expert of layer i (each token reaches top-k experts) in that pass (``scoring``: the dense model;
    ``pruning``: the inputs of the already-pruned layers); ``unrouted_experts[pass]`` the experts that got
    none; ``magnitude_fallback`` the matrices the last pruning pass pruned by magnitude for that reason.
    """

    def __init__(self) -> None:
        self.tokens_per_expert: dict[str, dict[str, list[int]]] = {}
        self.magnitude_fallback: list[str] = []

    def start_pruning(self) -> None:
        """A new pruning pass (``lsaf bench`` prunes once per allocation): forget the previous one's."""
        self.tokens_per_expert.pop("pruning", None)
        self.magnitude_fallback = []

    def observe(self, pass_name: str, linears: Sequence[LinearInfo], stats: Mapping[str, LinearStats]) -> None:
        """Record the token counts of the experts among one layer's ``linears`` (from their gate_up stats)."""
        counts: dict[int, dict[int, int]] = {}
        for info in linears:
            if info.expert is None or info.parameter != "gate_up_proj" or info.name not in stats:
                continue
            counts.setdefault(info.layer, {})[info.expert] = int(stats[info.name].ntokens)
        for layer, per_expert in counts.items():
            self.tokens_per_expert.setdefault(pass_name, {})[f"layer.{layer}"] = [
                per_expert[e] for e in sorted(per_expert)
            ]

    def fell_back(self, linears: Sequence[LinearInfo]) -> None:
        self.magnitude_fallback.extend(info.name for info in linears)

    def unrouted_experts(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for pass_name, layers in self.tokens_per_expert.items():
            found[pass_name] = [f"{layer}.experts.{e}" for layer, n in layers.items() for e, c in enumerate(n) if not c]
        return found

    def __bool__(self) -> bool:
        return bool(self.tokens_per_expert or self.magnitude_fallback)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens_per_expert": self.tokens_per_expert,
            "unrouted_experts": self.unrouted_experts(),
            "magnitude_fallback": list(self.magnitude_fallback),
            "inputs_scaled_by_routing_weights": False,
        }

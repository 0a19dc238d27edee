"""The layer-by-layer loop over the calibration activations.

We never hard-code what a decoder layer is called with: the first layer's call is intercepted once
per batch, and whatever arguments the model passed (position embeddings, masks, position ids) are
replayed for every layer. Only the KV-cache arguments are dropped. Activations stay on the CPU in the
model's dtype; a pass holds one set of them and swaps inputs for outputs layer by layer. Each layer
is processed inside ``layout.resident(i)`` (a no-op unless its weights live on disk) and, with a
GPU, ``onloaded`` (moved to the device only for its turn).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from lsa_framework.engine.stats import gather_stats
from lsa_framework.errors import BadInputError
from lsa_framework.types import Layout, LinearStats

#: Keyword arguments of a decoder layer that carry the KV cache; dropped (we run with use_cache=False).
CACHE_KWARGS = frozenset({"past_key_value", "past_key_values", "cache", "layer_past", "cache_position"})


class _StopForward(Exception):
    """Raised inside layer 0 once its inputs are captured, to skip the rest of the model."""


def _to(value: Any, device: torch.device) -> Any:
    """Move the tensors in a layer's captured arguments (tuples such as (cos, sin) too)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


@contextmanager
def onloaded(layer: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Sequential onloading: the layer sits on ``device`` only while it is being processed."""
    if device.type == "cpu":
        yield
        return
    layer.to(device)
    try:
        yield
    finally:
        layer.to("cpu")


@dataclass
class Activations:
    """The calibration batch as seen at the input of one decoder layer."""

    hidden: list[torch.Tensor]  # one (batch, seqlen, hidden) tensor per calibration batch
    kwargs: list[dict[str, Any]] = field(default_factory=list)  # the layer's other arguments, per batch

    @property
    def nsamples(self) -> int:
        return sum(h.shape[0] for h in self.hidden)

    def to(self, device: torch.device) -> Activations:
        """Keep the calibration activations on the compute device between layers."""
        if device.type == "cpu":
            return self
        return Activations([h.to(device) for h in self.hidden], [_to(kw, device) for kw in self.kwargs])


def capture_layer_inputs(
    model: torch.nn.Module,
    first_layer: torch.nn.Module,
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device | None = None,
) -> Activations:
    """Run the model up to ``first_layer`` on every calibration batch and keep what it was given.

    The embedding runs where the model is (the CPU); the captured activations then move to ``device``.
    """
    captured = Activations(hidden=[])

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        rest = {k: v for k, v in kwargs.items() if k not in CACHE_KWARGS and k != "hidden_states"}
        if len(args) > 1:
            raise BadInputError(
                "The decoder layer is called with extra positional arguments, which this model family "
                "does not support yet; register an architecture plugin for it."
            )
        captured.hidden.append(hidden.detach())
        captured.kwargs.append(rest)
        raise _StopForward

    handle = first_layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                with contextlib.suppress(_StopForward):
                    model(input_ids=input_ids[start : start + batch_size], use_cache=False)
    finally:
        handle.remove()
    return captured.to(device) if device is not None else captured


def layer_forward(layer: torch.nn.Module, acts: Activations, layer_index: int) -> list[torch.Tensor]:
    """The layer's outputs for every batch; fails with the layer's index if they turn non-finite."""
    outputs = []
    with torch.no_grad():
        for hidden, kwargs in zip(acts.hidden, acts.kwargs, strict=True):
            out = layer(hidden, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            if not torch.isfinite(out).all():
                raise BadInputError(
                    f"Activations became NaN or inf at the output of decoder layer {layer_index}; "
                    "use --dtype float32 or check the model's weights."
                )
            outputs.append(out)
    return outputs


StatsCallback = Callable[[int, dict[str, LinearStats]], None]


def scoring_pass(
    layout: Layout,
    acts: Activations,
    needs: frozenset[str],
    on_stats: StatsCallback,
    after_layer: Callable[[int], None] | None = None,
) -> None:
    """Dense pass: one forward per layer both gathers its statistics and produces the next inputs."""
    device = acts.hidden[0].device
    for index, layer in enumerate(layout.layers):
        with layout.resident(index), onloaded(layer, device):
            with gather_stats(layout.linears[index], needs) as stats:
                outputs = layer_forward(layer, acts, index)
            on_stats(index, stats)
        acts.hidden = outputs
        if after_layer is not None:
            after_layer(index)


def pruning_pass(
    layout: Layout,
    acts: Activations | None,
    needs: frozenset[str],
    prune_layer: StatsCallback,
    after_layer: Callable[[int], None] | None = None,
    start: int = 0,
    restore_layer: Callable[[int], None] | None = None,
    saved_stats: dict[int, dict[str, LinearStats]] | None = None,
) -> None:
    """Sequential pass: statistics from the inputs of the already-pruned layers, prune, propagate.

    Two forwards per layer (before and after pruning), as in the Wanda and SparseGPT references;
    none after the last layer. A pruner that needs no statistics (magnitude) does not depend on the
    data at all: ``acts`` is then None and no forward runs. Neither does one with ``saved_stats``
    (the basic pipeline: statistics of the dense model, gathered by the scoring pass; each layer's
    are dropped once it is pruned).
    Layers before ``start`` are already pruned (a resumed run): ``restore_layer`` puts their saved
    weights back, then they only propagate.
    """
    if needs and acts is None and saved_stats is None:
        raise ValueError("a pruner that needs statistics needs the calibration activations or saved statistics")
    last = len(layout.layers) - 1
    device = acts.hidden[0].device if acts is not None else torch.device("cpu")
    for index, layer in enumerate(layout.layers):
        with layout.resident(index), onloaded(layer, device):
            if index < start and restore_layer is not None:
                restore_layer(index)
            if index >= start and saved_stats is not None:
                prune_layer(index, saved_stats.pop(index, {}))
            elif index >= start:
                with gather_stats(layout.linears[index], needs) as stats:
                    if acts is not None and needs:
                        layer_forward(layer, acts, index)
                prune_layer(index, stats)
            if acts is not None and index < last:
                acts.hidden = layer_forward(layer, acts, index)
        if after_layer is not None:
            after_layer(index)

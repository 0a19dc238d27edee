"""The two layer-by-layer loops over the calibration activations: the dense scoring pass and the pruning pass.

Activations stay on the compute device in the model's dtype; a pass holds one set of them and swaps
each layer's inputs for its outputs. Every layer is called with its own recorded arguments
(:mod:`lsa_framework.engine.layer_calls`), inside ``layout.resident(i)`` (a no-op unless its weights
live on disk) and, with a GPU, ``onloaded`` (moved to the device only for its turn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from lsa_framework.engine.layer_calls import Activations, layer_outputs
from lsa_framework.engine.statistics import gather_stats
from lsa_framework.types import Layout, LinearStats

#: Called with a layer index and the statistics of its linears (by name).
StatsCallback = Callable[[int, dict[str, LinearStats]], None]


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


def scoring_pass(
    layout: Layout,
    acts: Activations,
    needs: frozenset[str],
    on_stats: StatsCallback,
    after_layer: Callable[[int], None] | None = None,
    classes: Mapping[str, type] | None = None,
) -> None:
    """Dense pass: one forward per layer both gathers its statistics and produces the next inputs."""
    device = acts.hidden[0].device
    for index, layer in enumerate(layout.layers):
        with layout.resident(index), onloaded(layer, device):
            with gather_stats(layout.linears[index], needs, classes, layer) as stats:
                outputs = layer_outputs(layer, acts, index)
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
    classes: Mapping[str, type] | None = None,
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
                with gather_stats(layout.linears[index], needs, classes, layer) as stats:
                    if acts is not None and needs:
                        layer_outputs(layer, acts, index)
                prune_layer(index, stats)
            if acts is not None and index < last:
                acts.hidden = layer_outputs(layer, acts, index)
        if after_layer is not None:
            after_layer(index)

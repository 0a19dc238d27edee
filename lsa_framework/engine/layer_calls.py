"""Every decoder layer called exactly as the model calls it.

Layers of one model can be called differently: Gemma 2/3 and Qwen2 alternate sliding-window and full
attention layers (different masks), Gemma 3 gives them different rotary tables too, GPT-2 passes its
arguments by position. So nothing here assumes layers are alike: one cheap *dry pass* per calibration
batch runs the model with each decoder layer replaced by a recorder that keeps the arguments the model
passed to *that* layer and hands its input straight on. No layer computes anything, so the pass costs
the embedding and the masks; the arguments do not depend on the layers' outputs in any model we know
(masks and rotary tables are built before the layer loop), and a test checks on every supported family
that chaining the layers with their recorded arguments reproduces the model's own hidden states. A
model whose dry pass fails falls back to recording the arguments during a real forward.

Caches are dropped (nulled, whether passed by name or, as GPT-2 does, by position) and the model is
run with ``use_cache=False``. Arguments shared by several layers stay shared (one tensor, many
references), so recording every layer costs little memory.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from lsa_framework.errors import BadInputError

#: Argument names that carry the KV cache; nulled (we run with use_cache=False).
CACHE_ARGUMENTS = frozenset({"past_key_value", "past_key_values", "cache", "layer_past"})


class _StopForward(Exception):
    """Raised once the last layer's call is recorded, to skip the rest of the model."""


@dataclass(frozen=True)
class LayerCall:
    """How the model called one decoder layer on one batch, without the hidden states themselves."""

    args: tuple[Any, ...]  # positional arguments after the hidden states (caches nulled)
    kwargs: dict[str, Any]  # keyword arguments (caches nulled, use_cache False)
    hidden_by_name: bool = False  # the hidden states came as ``hidden_states=``, not first positional

    def __call__(self, layer: torch.nn.Module, hidden: torch.Tensor) -> Any:
        if self.hidden_by_name:
            return layer(*self.args, hidden_states=hidden, **self.kwargs)
        return layer(hidden, *self.args, **self.kwargs)


def _cache_free(layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
    """The call with every cache argument nulled and ``use_cache`` off."""
    by_name = not args
    hidden_args = args[1:] if args else ()
    try:
        names = list(inspect.signature(layer.forward).parameters)
    except (TypeError, ValueError):
        names = []
    positional = list(hidden_args)
    for position, value in enumerate(hidden_args, start=1):
        if (position < len(names) and names[position] in CACHE_ARGUMENTS) or (
            value is not None and type(value).__name__.endswith("Cache")
        ):
            positional[position - 1] = None
    named = {k: (None if k in CACHE_ARGUMENTS else v) for k, v in kwargs.items() if k != "hidden_states"}
    if "use_cache" in named:
        named["use_cache"] = False
    return LayerCall(tuple(positional), named, by_name)


def _hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise BadInputError(
            "A decoder layer of this model is called without a hidden-states tensor first; lsaf cannot drive "
            "its layers one by one (register an architecture plugin for it)."
        )
    return hidden


class _Recorder(torch.nn.Module):
    """Stands in for one decoder layer during the dry pass: records its call, passes its input on."""

    def __init__(self, real: torch.nn.Module, record: Callable[[torch.nn.Module, tuple, dict], None], last: bool):
        super().__init__()
        self.__dict__["_real"] = real  # not a submodule: the model must not see two layers
        self.__dict__["_record"] = record
        self.__dict__["_last"] = last

    def __getattr__(self, name: str) -> Any:  # the model may read attributes of its layers (attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_real"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.__dict__["_record"](self.__dict__["_real"], args, kwargs)
        if self.__dict__["_last"]:
            raise _StopForward
        return _hidden_of(args, kwargs)


@contextmanager
def _recorders(stack: torch.nn.ModuleList, record: Callable[[torch.nn.Module, tuple, dict], None]) -> Iterator[None]:
    originals = list(stack)
    last = len(originals) - 1
    try:
        for index, layer in enumerate(originals):
            stack[index] = _Recorder(layer, record, index == last)
        yield
    finally:
        for index, layer in enumerate(originals):
            stack[index] = layer


@dataclass
class BatchCalls:
    """One calibration batch: the first layer's input and every layer's call."""

    hidden: torch.Tensor
    calls: list[LayerCall]


def _dry_pass(model: Any, stack: torch.nn.ModuleList, input_ids: torch.Tensor) -> BatchCalls:
    seen: list[tuple[torch.nn.Module, tuple, dict]] = []
    record = lambda layer, args, kwargs: seen.append((layer, args, kwargs))  # noqa: E731
    with _recorders(stack, record), contextlib.suppress(_StopForward), torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    return _batch_calls(stack, seen)


def _real_pass(model: Any, stack: torch.nn.ModuleList, input_ids: torch.Tensor) -> BatchCalls:
    """The fallback: record each layer's call during a real forward (costs one dense forward)."""
    seen: list[tuple[torch.nn.Module, tuple, dict]] = []

    def hook(layer: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((layer, args, dict(kwargs)))

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in stack]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return _batch_calls(stack, seen)


def _batch_calls(stack: torch.nn.ModuleList, seen: list[tuple[torch.nn.Module, tuple, dict]]) -> BatchCalls:
    layers = list(stack)
    if len(seen) != len(layers) or any(
        layer is not expected for (layer, _, _), expected in zip(seen, layers, strict=True)
    ):
        raise _NotOneCallPerLayer
    _, first_args, first_kwargs = seen[0]
    hidden = _hidden_of(first_args, first_kwargs).detach()
    return BatchCalls(hidden, [_cache_free(layer, args, kwargs) for layer, args, kwargs in seen])


class _NotOneCallPerLayer(Exception):
    """The model did not call each decoder layer exactly once, in order."""


def record_layer_calls(model: Any, stack: torch.nn.ModuleList, input_ids: torch.Tensor) -> BatchCalls:
    """How ``model`` calls each layer of ``stack`` on ``input_ids``; see the module docstring."""
    try:
        return _dry_pass(model, stack, input_ids)
    except (_NotOneCallPerLayer, RuntimeError, TypeError, IndexError, ValueError, AttributeError):
        pass  # the model does something with its layers' outputs between layers: record a real forward
    try:
        return _real_pass(model, stack, input_ids)
    except _NotOneCallPerLayer:
        raise BadInputError(
            f"{type(model).__name__} does not call each of its {len(stack)} decoder layers once per forward; "
            "lsaf cannot drive its layers one by one (register an architecture plugin for it)."
        ) from None


def _to(value: Any, device: torch.device, moved: dict[int, Any]) -> Any:
    """Move the tensors in a layer's arguments, keeping shared tensors shared."""
    if isinstance(value, torch.Tensor):
        if id(value) not in moved:
            moved[id(value)] = value.to(device)
        return moved[id(value)]
    if isinstance(value, tuple):
        return tuple(_to(v, device, moved) for v in value)
    if isinstance(value, list):
        return [_to(v, device, moved) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device, moved) for k, v in value.items()}
    return value


@dataclass
class Activations:
    """The calibration batches as seen at the input of the current decoder layer, and how the model
    calls every layer on each batch (``calls[layer][batch]``)."""

    hidden: list[torch.Tensor]
    calls: list[list[LayerCall]] = field(default_factory=list)

    @property
    def nsamples(self) -> int:
        return sum(h.shape[0] for h in self.hidden)

    def to(self, device: torch.device) -> Activations:
        if device.type == "cpu":
            return self
        moved: dict[int, Any] = {}
        calls = [
            [LayerCall(_to(c.args, device, moved), _to(c.kwargs, device, moved), c.hidden_by_name) for c in layer]
            for layer in self.calls
        ]
        return Activations([h.to(device) for h in self.hidden], calls)


def capture_activations(
    model: Any, stack: torch.nn.ModuleList, input_ids: torch.Tensor, batch_size: int, device: torch.device | None
) -> Activations:
    """The calibration windows at the first layer's input, with every layer's own call per batch."""
    hidden: list[torch.Tensor] = []
    per_batch: list[list[LayerCall]] = []
    for start in range(0, input_ids.shape[0], batch_size):
        batch = record_layer_calls(model, stack, input_ids[start : start + batch_size])
        hidden.append(batch.hidden)
        per_batch.append(batch.calls)
    calls = [list(layer) for layer in zip(*per_batch, strict=True)] if per_batch else []
    acts = Activations(hidden, calls)
    return acts.to(device) if device is not None else acts


def layer_outputs(layer: torch.nn.Module, acts: Activations, index: int) -> list[torch.Tensor]:
    """Layer ``index``'s outputs for every batch; fails with the layer's index if they turn non-finite."""
    outputs = []
    with torch.no_grad():
        for hidden, call in zip(acts.hidden, acts.calls[index], strict=True):
            out = call(layer, hidden)
            out = out[0] if isinstance(out, tuple) else out
            if not torch.isfinite(out).all():
                raise BadInputError(
                    f"Activations became NaN or inf at the output of decoder layer {index}; "
                    "use --dtype float32 or check the model's weights."
                )
            outputs.append(out)
    return outputs


def chain(layers: Sequence[torch.nn.Module], acts: Activations) -> list[list[torch.Tensor]]:
    """The input of every layer (and the last output) when the layers are chained on ``acts``: the
    engine's view of the hidden states, for tests against ``output_hidden_states``."""
    seen = [list(acts.hidden)]
    for index, layer in enumerate(layers):
        acts.hidden = layer_outputs(layer, acts, index)
        seen.append(list(acts.hidden))
    return seen

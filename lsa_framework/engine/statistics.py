"""Activation statistics: registered accumulators, gathered by forward hooks once per input group.

Linears that read the same tensor (q/k/v, gate/up) form an input group: one hook per group, one
accumulation per statistic, shared by its linears. A statistic is a plugin (``lsaf_register_statistics``)
so a third-party scorer can bring the one it needs; the engine gathers the union of what the run's
plugins name in ``needs``, in the same forward. Accumulation is in float32 whatever the model's dtype.

The two built-in statistics are the references' own:

* ``input_sq_norm`` — Σ_tokens x_j² per input channel, divided by the number of sequences (Wanda's
  ``scaler_row``);
* ``gram`` — H = (2/n) Σ XᵀX over all tokens, n = the number of sequences (SparseGPT's Hessian).

A routed expert's statistics are these same sums over the tokens the router sent to it, unscaled by the
routing weights, still divided by the number of sequences (see :mod:`lsa_framework.engine.expert_stats`).

A statistic whose class sets ``site = "layer_input"`` is gathered on the hidden states entering the
decoder layer instead (the residual stream before the layer's input norm, which a linear never sees:
the norm divides it out), once per layer, and every linear of the layer gets the result. The built-in
one is ``residual_energy``: the mean over tokens of ‖h_t‖², the first position of every sequence
excluded (the ``rd`` scorer's normalisation).

A statistic whose class sets ``site = "output_norm"`` is gathered where a normalisation module reads a
linear's output (the very tensor: Gemma's post-attention and post-feedforward norms read what o_proj
and down_proj return), once per linear; the other linears of that block (q/k/v, gate/up) get the same
result, since the block's output passes through that norm. The built-in one is ``output_gain``: Σ‖norm(y_t)‖²/Σ‖y_t‖²,
by which that norm scales the energy of the output, and with it an error of the output, before it reaches
the residual stream (1 where no norm reads the output, as in Llama: o_proj and down_proj add straight in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from lsa_framework.engine.expert_stats import hook_experts
from lsa_framework.hookspecs import hookimpl
from lsa_framework.model.norms import is_norm
from lsa_framework.types import LinearInfo, LinearStats


class InputSqNorm:
    """Σ_tokens x_j², per input channel, over the number of sequences (Wanda's ``scaler_row``)."""

    name: ClassVar[str] = "input_sq_norm"

    def __init__(self, in_features: int, device: Any) -> None:
        self.total = torch.zeros(in_features, dtype=torch.float32, device=device)

    def add(self, x: torch.Tensor, batch: int) -> None:
        self.total += x.pow(2).sum(dim=0)

    def result(self, nsamples: int, ntokens: int) -> torch.Tensor:
        return self.total / max(nsamples, 1)


class Gram:
    """H = (2/n) Σ XᵀX, n = the number of sequences (SparseGPT's Hessian)."""

    name: ClassVar[str] = "gram"

    def __init__(self, in_features: int, device: Any) -> None:
        self.total = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)

    def add(self, x: torch.Tensor, batch: int) -> None:
        self.total.addmm_(x.T, x)

    def result(self, nsamples: int, ntokens: int) -> torch.Tensor:
        return self.total * (2.0 / max(nsamples, 1))


def without_first_positions(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(tokens, d) rows of ``batch`` equal-length sequences, without each sequence's first position (its
    attention-sink activations are orders of magnitude larger and would dominate an energy)."""
    per_sequence = x.shape[0] // max(batch, 1)
    if per_sequence > 1 and per_sequence * batch == x.shape[0]:
        return x.reshape(batch, per_sequence, -1)[:, 1:].reshape(-1, x.shape[-1])
    return x


class ResidualEnergy:
    """mean_t ‖h_t‖² of the hidden states entering a decoder layer, the first position of every
    sequence excluded (its attention-sink activations are orders of magnitude larger and would
    dominate the mean). A (1,) float64 tensor."""

    name: ClassVar[str] = "residual_energy"
    site: ClassVar[str] = "layer_input"

    def __init__(self, in_features: int, device: Any) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor, batch: int) -> None:
        x = without_first_positions(x, batch)
        self.total += x.double().pow(2).sum()
        self.count += x.shape[0]

    def result(self, nsamples: int, ntokens: int) -> torch.Tensor:
        return (self.total / max(self.count, 1)).reshape(1)


class OutputGain:
    """Σ_t ‖norm(y_t)‖² / Σ_t ‖y_t‖²: how much the normalisation module reading a linear's output y scales
    the energy of y (a sandwich norm divides y by its RMS and multiplies by its weight), the first position
    of every sequence excluded as in ``residual_energy``. A (1,) float64 tensor; 1 where no norm reads y
    (nor the output of y's block).

    A ratio of sums, not the mean of per-token ratios: it keeps the error relative to y's energy as the
    same fraction of the energy the norm writes. Per-token ratios are dominated by the few tokens where y
    is nearly zero (on Gemma 3's down_proj up to 570× larger), exactly where the linearisation fails: the
    norm's output has a bounded size whatever the error. ``add`` receives (tokens, 2·out_features): y and
    the norm's output side by side."""

    name: ClassVar[str] = "output_gain"
    site: ClassVar[str] = "output_norm"

    def __init__(self, in_features: int, device: Any) -> None:
        self.output = torch.zeros((), dtype=torch.float64, device=device)
        self.normed = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, batch: int) -> None:
        x = without_first_positions(x, batch)
        y, normed = x.double().chunk(2, dim=-1)
        self.output += y.pow(2).sum()
        self.normed += normed.pow(2).sum()

    def result(self, nsamples: int, ntokens: int) -> torch.Tensor:
        if float(self.output) <= 0.0:
            return torch.ones(1, dtype=torch.float64)
        return (self.normed / self.output).reshape(1)


@hookimpl
def lsaf_register_statistics(register: Any) -> None:
    register(InputSqNorm)
    register(Gram)
    register(ResidualEnergy)
    register(OutputGain)


def site_of(cls: type) -> str:
    """Where a statistic is gathered: ``"linear_input"`` (the default), ``"layer_input"`` or ``"output_norm"``."""
    return str(getattr(cls, "site", "linear_input"))


def registered_statistics() -> dict[str, type]:
    """Every registered statistic class by name."""
    from lsa_framework import registry

    return {name: entry.cls for name, entry in registry.collect("statistics").items()}


class _LayerInput:
    """The accumulators of a layer's layer-input statistics, created on the first batch (hidden size)."""

    def __init__(self, classes: Mapping[str, type]) -> None:
        self.classes = classes
        self.group: _Group | None = None

    def __call__(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            return
        if self.group is None:
            self.group = _Group(hidden.shape[-1], self.classes, hidden.device)
        self.group.add(hidden.detach())


class _OutputNorms:
    """The accumulators of each linear's output-norm statistics: a forward hook on every linear keeps its
    latest output, and one on every normalisation module of the layer feeds a linear's accumulators when
    the norm's input is that very tensor (identity, not equality: a view or a copy is another tensor)."""

    def __init__(self, linears: Sequence[LinearInfo], classes: Mapping[str, type], layer: torch.nn.Module) -> None:
        # a routed expert's output is never read by a norm as it is (it is weighted and summed first): its
        # accumulators see nothing and give their no-norm result
        self.groups = {info.name: _Group(info.weight.shape[0], classes, info.weight.device) for info in linears}
        self.linears = [info for info in linears if info.expert is None]
        self.outputs: dict[str, torch.Tensor] = {}
        self.norms = [module for module in layer.modules() if is_norm(module)]
        self.layer = layer

    def hooks(self) -> list[Any]:
        handles = [info.module.register_forward_hook(self._keep(info.name)) for info in self.linears]
        handles += [norm.register_forward_hook(self._feed) for norm in self.norms]
        handles.append(self.layer.register_forward_hook(lambda *_: self.outputs.clear()))
        return handles

    def _keep(self, name: str) -> Callable[..., None]:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self.outputs[name] = output

        return hook

    def _feed(self, _module: Any, args: tuple[Any, ...], output: Any) -> None:
        if not args or not isinstance(output, torch.Tensor):
            return
        for name, tensor in self.outputs.items():
            if args[0] is tensor and output.shape == tensor.shape:
                batch = tensor.shape[0] if tensor.dim() == 3 else 1
                paired = torch.cat([tensor.detach().float(), output.detach().float()], dim=-1)
                self.groups[name].add_tokens(paired.reshape(-1, paired.shape[-1]), batch)

    def results(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each linear's results; a linear whose own output no norm reads takes those of its block's one
        writer (the only linear of its block whose output a norm reads), since the block's output, its
        error included, passes through that norm: Gemma's q/k/v share o_proj's, gate/up down_proj's."""
        results = {name: group.result().values for name, group in self.groups.items()}
        writers: dict[tuple[Any, ...], list[str]] = {}
        for info in self.linears:
            if self.groups[info.name].ntokens > 0:
                writers.setdefault((info.layer, info.block), []).append(info.name)
        for info in self.linears:
            block_writers = writers.get((info.layer, info.block), [])
            if self.groups[info.name].ntokens == 0 and len(block_writers) == 1:
                results[info.name] = results[block_writers[0]]
        return results


class _Group:
    """The accumulators of one input group during one pass."""

    def __init__(self, in_features: int, classes: Mapping[str, type], device: Any) -> None:
        self.nsamples = 0
        self.ntokens = 0
        self.parts = {name: cls(in_features, device) for name, cls in classes.items()}

    def add(self, x: torch.Tensor) -> None:
        # x: (batch, tokens, in), (tokens, in) or flattened by the model (OPT); a "sample" is one sequence
        batch = x.shape[0] if x.dim() == 3 else 1
        self.add_tokens(x.reshape(-1, x.shape[-1]), batch)

    def add_tokens(self, flat: torch.Tensor, batch: int) -> None:
        """``flat`` (tokens, in): the rows this group read from ``batch`` sequences (a routed expert reads
        only some rows of them; with none, the sequences still count, the statistics see nothing)."""
        self.nsamples += batch
        self.ntokens += flat.shape[0]
        if flat.shape[0] == 0:
            return
        flat = flat.float()
        for part in self.parts.values():
            part.add(flat, batch)

    def result(self) -> LinearStats:
        values = {name: part.result(self.nsamples, self.ntokens) for name, part in self.parts.items()}
        return LinearStats(self.nsamples, self.ntokens, values)


def statistic_classes(needs: Iterable[str]) -> dict[str, type]:
    """The classes of the statistics named in ``needs``; an unknown name fails with the known ones."""
    wanted = sorted(set(needs))
    if not wanted:
        return {}
    known = registered_statistics()
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown statistics requested: {unknown}; registered: {sorted(known)}")
    return {name: known[name] for name in wanted}


@contextmanager
def gather_stats(
    linears: Sequence[LinearInfo],
    needs: Iterable[str],
    classes: Mapping[str, type] | None = None,
    layer: torch.nn.Module | None = None,
) -> Iterator[dict[str, LinearStats]]:
    """Hook ``linears`` while the caller runs forwards; on exit, fill the yielded dict.

    The dict maps each linear's name to its group's statistics. With no ``needs`` no hook is set.
    ``classes`` (name → statistic class) saves a registry lookup per layer. ``layer`` is the decoder
    layer the linears belong to: statistics of the ``layer_input`` site are gathered on its input, and
    routed experts (hooked once per experts module, :mod:`lsa_framework.engine.expert_stats`) learn from
    it how many sequences each forward carries (without it, each forward counts as one).
    """
    wanted = frozenset(needs)
    chosen = dict(classes) if classes is not None else statistic_classes(wanted)
    chosen = {name: cls for name, cls in chosen.items() if name in wanted}
    missing = wanted - set(chosen)
    if missing:
        raise ValueError(f"unknown statistics requested: {sorted(missing)}")
    at_layer = {name: cls for name, cls in chosen.items() if site_of(cls) == "layer_input"}
    at_output = {name: cls for name, cls in chosen.items() if site_of(cls) == "output_norm"}
    chosen = {name: cls for name, cls in chosen.items() if name not in at_layer and name not in at_output}
    layer_input = _LayerInput(at_layer) if at_layer else None
    if (at_layer or at_output) and layer is None:
        raise ValueError(
            f"statistics {sorted({*at_layer, *at_output})} are gathered in a layer (at its input or its norms); "
            "pass the layer"
        )
    output_norms = _OutputNorms(linears, at_output, layer) if at_output and layer is not None else None
    result: dict[str, LinearStats] = {}
    groups: dict[str, list[LinearInfo]] = {}
    for info in linears:
        groups.setdefault(info.input_group, []).append(info)
    accumulators: dict[str, _Group] = {}
    handles = []
    if chosen:
        for group, members in groups.items():
            first = members[0]
            acc = _Group(first.in_features, chosen, first.weight.device)
            accumulators[group] = acc
            if first.expert is not None:
                continue  # routed experts: one hook per experts module, below

            def hook(_module: Any, args: tuple[Any, ...], _acc: _Group = acc) -> None:
                _acc.add(args[0].detach())

            handles.append(first.module.register_forward_pre_hook(hook))
        handles.extend(hook_experts(groups, accumulators, layer))
    if layer_input is not None and layer is not None:
        handles.append(layer.register_forward_pre_hook(layer_input, with_kwargs=True))
    if output_norms is not None:
        handles.extend(output_norms.hooks())
    try:
        yield result
    finally:
        for handle in handles:
            handle.remove()
    layer_stats = layer_input.group.result() if layer_input is not None and layer_input.group else None
    for group, members in groups.items():
        if group in accumulators:
            stats = accumulators[group].result()
        elif layer_stats is not None:
            stats = LinearStats(layer_stats.nsamples, layer_stats.ntokens)
        else:
            stats = LinearStats(0, 0)
        if layer_stats is not None:
            stats.values.update(layer_stats.values)
        for info in members:
            result[info.name] = stats
    if output_norms is not None:  # per linear: the members of a group no longer share one object
        for name, values in output_norms.results().items():
            shared = result[name]
            result[name] = LinearStats(shared.nsamples, shared.ntokens, {**shared.values, **values})

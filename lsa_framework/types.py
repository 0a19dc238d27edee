"""The public types plugin authors build on.

A model is seen through its :class:`Layout`: decoder layers, each with its linears, and each linear
tagged with its block (``attention``/``mlp``), its projection (``q``, ``k``, ... ``down``) and the
input group it shares an input with (q/k/v read the same tensor, so do gate/up). An allocator cuts the
layout into :class:`Unit` s; a scorer scores units from the :class:`LinearStats` the engine gathered;
a pruner prunes one linear from its stats. The four plugin kinds are the Protocols at the bottom.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict

from lsa_framework.errors import BadInputError

#: Statistics a plugin may ask the engine for (``needs``).
#: ``input_sq_norm``: Σ_tokens x_j² per input channel, divided by the number of sequences (Wanda's
#: ``scaler_row``); ``gram``: H = (2/n) Σ XᵀX over all calibration tokens, n = number of sequences
#: (SparseGPT's Hessian).
STAT_NAMES = frozenset({"input_sq_norm", "gram"})

Block = Literal["attention", "mlp"]


@dataclass(frozen=True)
class LinearInfo:
    """One prunable linear of a decoder layer."""

    name: str  # full module name, e.g. "model.layers.3.self_attn.q_proj"
    layer: int  # index of its decoder layer
    block: Block
    projection: str  # "q", "k", "v", "o", "gate", "up", "down"
    input_group: str  # linears with the same input_group read the same input tensor
    module: torch.nn.Linear = field(repr=False, compare=False, hash=False)

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


@dataclass(frozen=True)
class Layout:
    """Where the prunable parts of a causal LM are."""

    architecture: str  # name of the architecture plugin that produced it
    layers: Sequence[torch.nn.Module] = field(repr=False)
    linears: Sequence[Sequence[LinearInfo]]  # linears[i] = the linears of decoder layer i
    #: ``with layout.resident(i):`` — layer i's weights are in memory inside the block. Always true for
    #: a model loaded whole; with ``--offload disk`` the weights are read from disk on entry and
    #: written back (if changed) and dropped on exit. Code that reads or writes the weights of a layer
    #: outside a forward call (scorers and pruners are already called inside) must enter it.
    resident: Callable[[int], AbstractContextManager[Any]] = field(
        default=lambda _index: nullcontext(), repr=False, compare=False
    )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def all_linears(self) -> list[LinearInfo]:
        return [info for layer in self.linears for info in layer]


@dataclass(frozen=True)
class Unit:
    """What gets one sparsity: a layer, a block of a layer, or a single projection."""

    name: str  # e.g. "layer.3", "layer.3.attention", "layer.3.q"
    layer: int
    linears: tuple[LinearInfo, ...]

    @property
    def numel(self) -> int:
        return sum(info.numel for info in self.linears)


@dataclass
class LinearStats:
    """Activation statistics of one linear's input, float32, gathered by the engine."""

    nsamples: int
    ntokens: int
    input_sq_norm: torch.Tensor | None = None  # (in_features,)
    gram: torch.Tensor | None = None  # (in_features, in_features)

    def require(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"statistic {name!r} was not gathered; declare it in the plugin's `needs`")
        return value


@dataclass(frozen=True)
class Pattern:
    """Unstructured sparsity (n = m = 0) or N:M (n zeros in every group of m consecutive inputs)."""

    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float | None:
        """The sparsity the pattern itself fixes (N:M), or None when unstructured."""
        return self.n / self.m if self.is_nm else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Parse ``unstructured`` or ``N:M`` (N zeros per M weights, 0 < N < M)."""
        text = text.strip().lower()
        if text in ("", "unstructured", "none"):
            return cls()
        parts = text.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise BadInputError(
                f"Pattern {text!r} is not 'unstructured' or N:M such as 2:4; pass --pattern 2:4 or 4:8."
            )
        n, m = (int(p) for p in parts)
        if not 0 < n < m:
            raise BadInputError(
                f"Pattern {text!r} is impossible: N:M needs 0 < N < M (N zeros in every M weights), e.g. 2:4."
            )
        return cls(n, m)


class PluginOptions(BaseModel):
    """Base of every plugin's options; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Scores:
    """Unit scores from a scorer, with what the allocator needs to turn them into sparsities.

    ``higher_is_important``: True when a larger score means the unit should be pruned less (OWL's
    outlier ratio); False when a larger score means it can be pruned more (LSE error, DLP).
    ``spread``: the half-width β of the sparsity band around the target (0 = uniform).
    """

    values: Mapping[str, float]
    higher_is_important: bool
    spread: float


@dataclass
class EvalContext:
    """What an evaluator may use besides the model and tokenizer."""

    config: Any  # the RunConfig
    dataset: Any  # the text source (its "evaluation" split is disjoint from calibration)
    layout: Layout | None = None
    #: the calibration windows' length, fitted to the model's context (``config.seqlen`` may exceed it)
    seqlen: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Scorer(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]
    needs: ClassVar[frozenset[str]]

    def __init__(self, options: Any) -> None: ...

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> float:
        """Score one unit; ``stats`` maps each of its linears' names to the statistics in ``needs``."""
        ...

    def finish(self, values: Mapping[str, float], target: float, granularity: str) -> Scores:
        """Wrap all unit scores with the scorer's direction and spread for the allocator."""
        ...


@runtime_checkable
class Allocator(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]
    granularity: ClassVar[str]  # "layer", "block" or "projection": tells scorers which defaults apply

    def __init__(self, options: Any) -> None: ...

    def units(self, layout: Layout) -> list[Unit]:
        """Cut the layout into units; every prunable linear belongs to exactly one unit."""
        ...

    def allocate(self, scores: Scores, sizes: Mapping[str, int], target: float) -> dict[str, float]:
        """Map unit scores to per-unit sparsities whose size-weighted mean is ``target``."""
        ...


@runtime_checkable
class Pruner(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]
    needs: ClassVar[frozenset[str]]

    def __init__(self, options: Any) -> None: ...

    def prune(self, linear: torch.nn.Linear, stats: LinearStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Zero weights of ``linear`` in place and return the boolean mask of pruned weights.

        Optionally a pruner also defines ``prune_group(linears, stats, sparsities, pattern) -> masks``:
        the engine then calls it once per input group (linears sharing one input and ``stats``)
        instead of ``prune`` per linear, so shared work is done once.
        """
        ...


@runtime_checkable
class Evaluator(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]

    def __init__(self, options: Any) -> None: ...

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, context: EvalContext) -> dict[str, float]:
        """Return named metrics of the model as it is now."""
        ...

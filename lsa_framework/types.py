"""The public types plugin authors build on, and the contract of every plugin kind.

A model is seen through its :class:`Layout`: decoder layers, each with its prunable linears, and each
linear tagged with its block (``attention``/``mlp``), its projection (a short name such as ``q`` or
``down``) and the input group it shares an input with (q/k/v read the same tensor, so do gate/up). An
allocator cuts the layout into :class:`Unit` s; a scorer scores units from the :class:`LinearStats`
the engine gathered; a pruner prunes one linear from its stats.

Every plugin kind is a Protocol below. The registry checks a class against its kind's Protocol when
it is registered (a missing method or attribute is reported then, naming the package), and the
engine calls plugins only through these methods. Optional capabilities are *declared* in a class
attribute ``capabilities`` (e.g. a pruner's ``{"prune_group"}``), never probed for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from lsa_framework.errors import BadInputError

if TYPE_CHECKING:
    import torch

Block = Literal["attention", "mlp"]


@dataclass(frozen=True)
class LinearInfo:
    """One prunable weight matrix of a decoder layer.

    Usually an ``nn.Linear``; the engine also handles transformers' ``Conv1D`` (GPT-2), whose weight
    is stored (in, out), and slices of fused 3-D expert parameters. :attr:`weight` is always the
    (out_features, in_features) view that pruners and scorers work on; writing into it writes the model.
    """

    name: str  # full name, e.g. "model.layers.3.self_attn.q_proj"
    layer: int  # index of its decoder layer
    block: Block
    projection: str  # short name unique within the layer: "q", "k", ..., "down", "c_attn", ...
    input_group: str  # linears with the same input_group read the same input tensor
    module: Any = field(repr=False, compare=False, hash=False)  # the module holding the parameter
    parameter: str = "weight"  # the module's attribute holding the matrix
    transposed: bool = False  # stored as (in, out) (Conv1D)
    index: int | None = None  # a slice of a stacked parameter (one expert of fused experts)
    expert: int | None = None  # the routed expert this matrix belongs to (its statistics: its routed tokens)

    @property
    def weight(self) -> torch.Tensor:
        """The (out, in) weight, a view of the model's parameter (looked up anew: offloading swaps it)."""
        tensor = getattr(self.module, self.parameter)
        if self.index is not None:
            tensor = tensor[self.index]
        return tensor.t() if self.transposed else tensor

    @property
    def numel(self) -> int:
        return self.weight.numel()

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def prunable(self) -> Any:
        """What a pruner's ``prune`` receives: the ``nn.Linear`` itself when the weight is its plain
        ``weight``, otherwise a :class:`WeightView` with the same ``weight`` (out, in) attribute."""
        if self.parameter == "weight" and not self.transposed and self.index is None:
            return self.module
        return WeightView(self)


class WeightView:
    """A linear-like view (``.weight``, ``.in_features``, ``.out_features``) of a matrix that is not a plain
    ``nn.Linear`` weight; in-place edits of ``.weight`` reach the model."""

    def __init__(self, info: LinearInfo) -> None:
        self._info = info

    @property
    def weight(self) -> torch.Tensor:
        return self._info.weight

    @property
    def in_features(self) -> int:
        return self._info.in_features

    @property
    def out_features(self) -> int:
        return self._info.out_features


@dataclass(frozen=True)
class Layout:
    """Where the prunable parts of a causal LM are."""

    architecture: str  # how it was found: "generic", or the architecture plugin that refined it
    layers: Sequence[Any] = field(repr=False)  # the decoder layers (torch modules), in order
    linears: Sequence[Sequence[LinearInfo]]  # linears[i] = the linears of decoder layer i
    #: ``with layout.resident(i):`` — layer i's weights are in memory inside the block. Always true for
    #: a model loaded whole; with ``--offload disk`` the weights are read from disk on entry and
    #: written back (if changed) and dropped on exit. Code that reads or writes the weights of a layer
    #: outside a forward call (scorers and pruners are already called inside) must enter it.
    resident: Callable[[int], AbstractContextManager[Any]] = field(
        default=lambda _index: nullcontext(), repr=False, compare=False
    )
    #: the model's ``nn.ModuleList`` of decoder layers (the engine drives the layers through it)
    stack: Any = field(default=None, repr=False, compare=False)
    #: a token every sequence must start with (Gemma's ``<bos>``); calibration and perplexity windows
    #: then begin with it. None: windows are plain slices of the text, as in the references.
    bos_token_id: int | None = None

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


class LinearStats:
    """Activation statistics of one linear's input (float32), gathered by the engine.

    ``stats["gram"]`` / ``stats.require("gram")`` is a registered statistic by name (see
    :class:`Statistic`); the two built-in ones are also attributes: ``input_sq_norm`` (in_features,),
    Σ_tokens x_j² divided by the number of sequences (Wanda's ``scaler_row``), and ``gram``
    (in_features, in_features), H = (2/n) Σ XᵀX over all calibration tokens, n = number of sequences
    (SparseGPT's Hessian). Linears of one input group share one object.
    """

    def __init__(
        self,
        nsamples: int,
        ntokens: int,
        values: Mapping[str, torch.Tensor] | None = None,
        **named: torch.Tensor | None,
    ) -> None:
        self.nsamples = nsamples
        self.ntokens = ntokens
        self.values: dict[str, torch.Tensor] = dict(values or {})
        self.values.update({k: v for k, v in named.items() if v is not None})

    @property
    def input_sq_norm(self) -> torch.Tensor | None:
        return self.values.get("input_sq_norm")

    @property
    def gram(self) -> torch.Tensor | None:
        return self.values.get("gram")

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.require(name)

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def require(self, name: str) -> torch.Tensor:
        value = self.values.get(name)
        if value is None:
            raise RuntimeError(f"statistic {name!r} was not gathered; declare it in the plugin's `needs`")
        return value

    def only(self, names: frozenset[str]) -> LinearStats:
        """A copy holding only ``names`` (tensors shared, not copied)."""
        return LinearStats(self.nsamples, self.ntokens, {k: v for k, v in self.values.items() if k in names})

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.values.items()}
        return f"LinearStats(nsamples={self.nsamples}, ntokens={self.ntokens}, {shapes})"


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


#: What a scorer's ``score`` returns for one unit: one number, or several (e.g. an error curve over a
#: grid of sparsities). Either is stored as JSON with the run's scores (resume, ``lsaf bench``).
UnitScore = float | list[float]


@dataclass(frozen=True)
class Scores:
    """Unit scores from a scorer, with what the allocator needs to turn them into sparsities.

    ``higher_is_important``: True when a larger score means the unit should be pruned less (OWL's
    outlier ratio); False when a larger score means it can be pruned more (LSE error, DLP).
    ``spread``: the half-width β of the sparsity band around the target (0 = uniform).

    ``curves`` (optional): each unit's error at every sparsity of ``levels`` (one shared, strictly
    increasing grid), for allocators that minimise the summed error at the exact parameter budget
    (rate–distortion; the built-in layer/block/projection/expert allocators do this whenever curves are
    given, and map ``values`` otherwise). A scorer gives curves when it can measure what pruning a
    unit costs rather than rank units; ``values`` then still holds one number per unit for reports.
    """

    values: Mapping[str, float]
    higher_is_important: bool
    spread: float
    curves: Mapping[str, Sequence[float]] | None = None
    levels: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if (self.curves is None) != (self.levels is None):
            raise ValueError("Scores.curves and Scores.levels come together: give both or neither")


@dataclass
class EvalContext:
    """What an evaluator may use besides the model and tokenizer."""

    config: Any  # the RunConfig
    dataset: Any  # the text source (its "evaluation" split is disjoint from calibration)
    layout: Layout | None = None
    #: the calibration windows' length, fitted to the model's context (``config.seqlen`` may exceed it)
    seqlen: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportContext:
    """What an exporter receives to write its part of the output folder."""

    result: Any  # the RunResult (its to_json() is run.json)
    model: Any  # the pruned model
    tokenizer: Any
    layout: Layout
    #: ``save_model(folder)``: the model as a ``from_pretrained`` folder (streams shards with --offload disk)
    save_model: Callable[[Any], None]
    masks: Any  # the run's MaskSet: every pruned linear's mask, bit-packed (see lsa_framework.engine.masks)
    base_identity: Mapping[str, str]  # {"model": spec, "source": path, "sha256": content hash}


@dataclass
class RecoveryContext:
    """What a recoverer trains on and where it may keep its checkpoints."""

    windows: Any  # LongTensor (n, seqlen): calibration windows (never the evaluation text)
    linear_names: list[str]  # the pruned linears, by module name: their zeros are the masks to keep
    checkpoint_dir: Any = None  # a folder for resumable checkpoints (None: none)
    resume: bool = False
    on_step: Callable[[int, float], None] | None = None  # (step, loss) after every optimizer step


@dataclass
class SearchContext:
    """What a scorer with the ``search`` capability receives from the engine (see :class:`Scorer`).

    ``fitness(sparsities, tokens, sample_seed)`` prunes the model at the candidate allocation (unit
    name → sparsity, from the dense weights and the dense model's statistics, with the run's pruner)
    and returns the KL divergence of its next-token distribution from the dense model's, averaged
    over ``tokens`` calibration tokens drawn by ``sample_seed`` (the same seed, the same tokens); lower
    is better. The model is dense again when the search returns. ``allocate(scores)`` runs the job's
    allocator on other scores (to build alternative starting points). ``state_file`` is where a
    resumable search keeps its state (None: the run has no output); with ``resume`` an existing state
    is continued. ``progress(done, total, text)`` shows progress (``total`` None when unknown).
    """

    units: Sequence[Unit]
    sizes: Mapping[str, int]
    target: float
    start: Mapping[str, float]  # the allocator's allocation from this scorer's own scores
    scores: Scores
    fitness: Callable[[Mapping[str, float], int, int], float]
    allocate: Callable[[Scores], dict[str, float]]
    seed: int = 0
    state_file: Any = None  # a pathlib.Path, or None
    resume: bool = False
    progress: Callable[[int, int | None, str], None] = field(default=lambda _d, _t, _s: None, repr=False)
    #: what the search reports about itself (generations, evaluations, fitness); recorded in run.json
    record: dict[str, Any] = field(default_factory=dict)


# --- the contract of each plugin kind -------------------------------------------------------------------


@runtime_checkable
class Scorer(Protocol):
    """``--scorer``: one importance score per unit, from the dense model's statistics.

    Capability ``"search"``: ``search(context: SearchContext) -> dict[str, float]`` refines the
    allocator's allocation by evaluating candidate allocations on the model (EvoPress-style search);
    the engine calls it after the allocation stage with a :class:`SearchContext`.
    """

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]
    #: the statistics ``score`` reads (names of registered statistics); empty: no data pass is run
    needs: ClassVar[frozenset[str]]

    def __init__(self, options: Any) -> None: ...

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> float | Sequence[float]:
        """Score one unit; ``stats`` maps each of its linears' names to the statistics in ``needs``.

        One number, or a list of numbers (:data:`UnitScore`) that ``finish`` turns into :class:`Scores`.
        """
        ...

    def finish(self, values: Mapping[str, Any], target: float, granularity: str) -> Scores:
        """Wrap all unit scores with the scorer's direction and spread for the allocator."""
        ...


@runtime_checkable
class Allocator(Protocol):
    """``--allocator``: cuts the layout into units and maps their scores to sparsities.

    Optional class attribute ``uses_scores = False``: the allocator ignores scores (e.g. a fixed depth
    profile), so no scoring pass runs whatever the scorer.
    """

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]
    granularity: ClassVar[str]  # "layer", "block", "projection" or "expert": tells scorers which defaults apply

    def __init__(self, options: Any) -> None: ...

    def units(self, layout: Layout) -> list[Unit]:
        """Cut the layout into units; every prunable linear belongs to exactly one unit."""
        ...

    def allocate(self, scores: Scores, sizes: Mapping[str, int], target: float) -> dict[str, float]:
        """Map unit scores to per-unit sparsities whose size-weighted mean is ``target``."""
        ...


@runtime_checkable
class Pruner(Protocol):
    """``--pruner``: zeroes weights of one linear (and may update the others).

    Capabilities (declare in ``capabilities``): ``"prune_group"`` — the pruner also defines
    ``prune_group(linears, stats, sparsities, pattern) -> masks``, which the engine then calls once per
    input group (linears sharing one input and one ``stats``) so shared work is done once;
    ``"updates_weights"`` — the kept weights change too (SparseGPT), so masks alone cannot rebuild
    the pruned model (``lsaf apply`` refuses them); ``"prepare"`` — the pruner also defines
    ``prepare(sparsities) -> dict``, which the engine calls before every pruning pass with the
    sparsity of every linear to be pruned (by name), e.g. to choose a rounding rule for non-uniform
    allocations; what it returns is recorded in run.json (``allocation.pruning``).
    """

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]
    needs: ClassVar[frozenset[str]]

    def __init__(self, options: Any) -> None: ...

    def prune(self, linear: Any, stats: LinearStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Zero weights of ``linear.weight`` (out, in) in place; return the boolean mask of pruned weights."""
        ...


@runtime_checkable
class Evaluator(Protocol):
    """``--eval``: named metrics of the model as it is.

    ``headline`` names the metric tables show for it; ``lower_is_better`` says which way is better
    (None: descriptive, e.g. sparsity). Optional ``summary``: glob patterns of the metrics worth a row
    in reports (default: the headline alone; the others, such as per-layer breakdowns, stay in
    run.json). Capability ``"check"``: ``check(config)`` refuses settings it cannot use before any
    work is done.
    """

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]
    headline: ClassVar[str]
    lower_is_better: ClassVar[bool | None]

    def __init__(self, options: Any) -> None: ...

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, float]:
        """Return named metrics of the model as it is now."""
        ...


@runtime_checkable
class Dataset(Protocol):
    """``--calibration``: text for calibration and evaluation; the two splits never share text.

    Optional classmethod ``options_for(spec) -> dict | None`` (capability ``"claims_specs"``) claims
    ``--calibration`` values that are not plugin names (the built-in ``file`` dataset claims paths).
    """

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]

    def documents(self, split: str) -> list[str]:
        """The documents of ``split``, ``"calibration"`` or ``"evaluation"``."""
        ...


@runtime_checkable
class Architecture(Protocol):
    """Refines the generic layout of models it recognises: only what the module tree cannot tell."""

    name: ClassVar[str]

    def matches(self, model: Any) -> bool:
        """Whether this plugin applies to ``model``."""
        ...

    def refine(self, model: Any, layout: Layout) -> Layout:
        """The generic ``layout`` corrected (e.g. linears to skip, other blocks or projection names)."""
        ...


@runtime_checkable
class Exporter(Protocol):
    """``--export``: writes one part of the output folder (e.g. ``model/``, ``masks/``)."""

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]

    def __init__(self, options: Any) -> None: ...

    def export(self, context: ExportContext, folder: Any) -> None:
        """Write into ``folder`` (a fresh subfolder of the output's temporary folder, named after the exporter)."""
        ...


@runtime_checkable
class Recoverer(Protocol):
    """``--recover`` / ``lsaf recover``: fine-tunes the pruned model; every pruned weight stays exactly zero.

    ``recover`` returns a :class:`lsa_framework.recovery.training.RecoveryResult`. Capability
    ``"extra_output"``: ``save_extra(recovered, folder) -> names`` writes more of the output folder
    (the ``lora`` recoverer's unmerged ``adapter/``) before ``model/`` is written.
    """

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]

    def __init__(self, options: Any) -> None: ...

    def recover(self, model: Any, context: RecoveryContext) -> Any:
        """Train ``model`` in place on ``context.windows``; raise if a pruned weight would change."""
        ...


@runtime_checkable
class Statistic(Protocol):
    """An activation statistic accumulated from a linear's inputs, registered under ``name``.

    One instance per input group and pass: ``add`` receives every batch of inputs flattened to
    (tokens, in_features) float32 (``batch`` sequences of them, the tokens of each consecutive),
    ``result`` returns the final tensor.

    Optional class attribute ``site``: ``"linear_input"`` (the default) gathers it on the input of each
    input group; ``"layer_input"`` on the hidden states entering the decoder layer (the residual
    stream before the layer's input norm), once per layer; ``in_features`` is then the hidden size
    and every linear of the layer sees the one result. ``"output_norm"``: once per linear, where a
    normalisation module reads that linear's output tensor; ``add`` then receives (tokens,
    2·out_features), the output and the norm's output side by side, and never runs for a linear whose
    output no norm reads (``result`` must then give the no-norm value); such a linear gets the result of
    its block's one linear whose output a norm reads, if there is one.
    """

    name: ClassVar[str]

    def __init__(self, in_features: int, device: Any) -> None: ...

    def add(self, x: torch.Tensor, batch: int) -> None: ...

    def result(self, nsamples: int, ntokens: int) -> torch.Tensor: ...


#: kind -> (Protocol, the capabilities it may declare, each with the method it requires)
CONTRACTS: dict[str, tuple[type, dict[str, str | None]]] = {
    "scorers": (Scorer, {"search": "search"}),
    "allocators": (Allocator, {}),
    "pruners": (Pruner, {"prune_group": "prune_group", "updates_weights": None, "prepare": "prepare"}),
    "evaluators": (Evaluator, {"check": "check"}),
    "datasets": (Dataset, {"claims_specs": "options_for"}),
    "architectures": (Architecture, {}),
    "exporters": (Exporter, {}),
    "recoverers": (Recoverer, {"extra_output": "save_extra"}),
    "statistics": (Statistic, {}),
}


def capabilities(cls: Any) -> frozenset[str]:
    """The optional capabilities a plugin class declares."""
    return frozenset(getattr(cls, "capabilities", frozenset()))


def contract_problems(kind: str, cls: Any) -> list[str]:
    """What ``cls`` lacks to be a plugin of ``kind`` (empty when it fulfils the contract)."""
    protocol, allowed = CONTRACTS[kind]
    problems: list[str] = []
    for attribute in _protocol_members(protocol):
        if not hasattr(cls, attribute):
            problems.append(f"no {attribute!r}")
    options = getattr(cls, "Options", None)
    if "Options" in _protocol_members(protocol) and not (isinstance(options, type) and issubclass(options, BaseModel)):
        problems.append("'Options' is not a pydantic model (subclass lsa_framework.types.PluginOptions)")
    needs: Any = getattr(cls, "needs", frozenset())
    if not isinstance(needs, (frozenset, set)) or not all(isinstance(n, str) for n in needs):
        problems.append("'needs' is not a set of statistic names")
    declared: Any = getattr(cls, "capabilities", frozenset())
    if not isinstance(declared, (frozenset, set)):
        problems.append("'capabilities' is not a set of names")
        declared = frozenset()
    for capability in declared:
        if capability not in allowed:
            problems.append(f"unknown capability {capability!r} (known: {', '.join(sorted(allowed)) or 'none'})")
        elif allowed[capability] is not None and not callable(getattr(cls, str(allowed[capability]), None)):
            problems.append(f"declares {capability!r} but has no {allowed[capability]}() method")
    return problems


def _protocol_members(protocol: type) -> Iterator[str]:
    """The public attributes and methods a Protocol requires (``__init__`` is every class's)."""
    import typing

    members = getattr(protocol, "__protocol_attrs__", None)
    if members is None:  # Python < 3.12
        members = typing._get_protocol_attrs(protocol)  # type: ignore[attr-defined]
    for name in sorted(members):
        if not name.startswith("_"):
            yield name

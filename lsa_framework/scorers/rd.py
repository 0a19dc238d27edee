"""The ``rd`` scorer (rate–distortion): each unit's pruning error at a grid of sparsities, so that the
allocator can minimise the total error at the exact parameter budget.

    lsaf run --scorer rd --allocator layer|block|projection [--scorer-opt curve=wanda|sparsegpt]

For every linear, :func:`~lsa_framework.allocators.error_curves.anchored_wanda_curve` gives the
layer-local reconstruction error tr((W − Ŵ) H (W − Ŵ)ᵀ) of the Wanda mask at every level of
``levels`` (exact at ``anchors``, see that module); with ``curve=sparsegpt`` the error after
SparseGPT's update, computed at the anchors only and interpolated linearly between them (one
SparseGPT run per anchor: several times the cost). A unit's curve is the sum over its linears, so
the one scoring pass serves layer, block and projection units alike.

Normalisation: each unit's curve is divided by the residual-stream energy entering its decoder layer
(``residual_energy``: mean ‖h_t‖² of the layer's input hidden states, first position of every window
excluded). Why: a linear's output error lands in the residual stream, and every later layer reads the
stream through an RMSNorm that divides by its scale, so what downstream layers see is the error
relative to the stream; raw errors grow with depth as the stream does and would push the sparsity
into the first layers. (Measured on the default model at 70% with Wanda by the error-curve study:
raw errors gave ~27× uniform's perplexity, errors relative to each layer's own output energy ~15×,
and errors relative to the residual stream at the layer input matched DLP.) The first position is
excluded because its attention-sink activations are orders of magnitude larger than the others'.

Output norms (``output_norms=true``, the default): where a normalisation module reads a linear's output
before it reaches the stream (Gemma 2/3's post-attention and post-feedforward norms after o_proj and
down_proj), the error the stream receives is the linear's error times that norm's gain
(``output_gain``: Σ‖norm(y)‖²/Σ‖y‖², measured in the same pass), so each linear's curve is scaled by
it; q/k/v and gate/up take the gain of their block's norm, which their errors pass through too.
Where no norm reads the output (Llama and most families) the gain is exactly 1 and nothing changes.
On Gemma 3 270M the gains span 0.39 to 4·10⁵ (o_proj) and 130 to 3·10⁷ (down_proj) across the 18
layers, growing with depth: without them rd kept layers 0–1 dense and pruned layers 11–17 to 95%
(``benchmarks/results/post_norm_gain_gemma3-270m.md``; perplexities in docs/algorithms.md).

The scores are the curves themselves (lists, stored with the run's scores), returned in
``Scores.curves``; the built-in allocators then choose, on each unit's lower convex hull, the
sparsities that minimise the summed normalised error with the parameter-weighted mean exactly the
target (:func:`~lsa_framework.allocators.budget.allocate_rd`). ``Scores.values`` holds each unit's
error at the target, for reports only. Not in the references: OWL, DLP and LSA rank units by a
heuristic score and map it into a band; none of them allocates from error curves.

Rounding: the curves use the masks the pruner applies (``rounding=exact``, as Wanda's ``auto`` does
for any non-uniform allocation).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from lsa_framework.allocators.error_curves import anchored_wanda_curve, sparsegpt_error_curve
from lsa_framework.allocators.mapping import MAX_SPARSITY
from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import LinearInfo, LinearStats, PluginOptions, Scores, Unit

#: The default grid: every 2.5% from 0 to 95% (the allocation's resolution).
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(0.025 * i, 4) for i in range(39))
#: Where the full error is computed (one product with H each); in between, the diagonal part is exact.
DEFAULT_ANCHORS: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


class RdOptions(PluginOptions):
    levels: list[float] = Field(
        default_factory=lambda: list(DEFAULT_LEVELS), description="sparsity grid of the error curves"
    )
    anchors: list[float] = Field(
        default_factory=lambda: list(DEFAULT_ANCHORS),
        description="levels where the full error is computed (include the largest level)",
    )
    curve: Literal["wanda", "sparsegpt"] = Field(default="wanda", description="the pruner whose error is measured")
    rounding: Literal["exact", "floor"] = Field(default="exact", description="row rounding of the Wanda masks")
    normalise: Literal["residual", "none"] = Field(
        default="residual", description="divide by the residual-stream energy at the layer input (or not)"
    )
    output_norms: bool = Field(
        default=True, description="scale a linear's error by the gain of a norm that reads its output (Gemma)"
    )

    @field_validator("levels", "anchors")
    @classmethod
    def _grid(cls, value: list[float]) -> list[float]:
        if not value or any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("must be a non-empty, strictly increasing list of sparsities")
        if value[0] < 0.0 or value[-1] > MAX_SPARSITY:
            raise ValueError(f"sparsities must lie in [0, {MAX_SPARSITY}]")
        return value

    @model_validator(mode="after")
    def _anchors_on_grid(self) -> RdOptions:
        if any(a not in self.levels for a in self.anchors) or self.anchors[-1] != self.levels[-1]:
            raise ValueError(f"anchors must be levels of the grid and include its largest, {self.levels[-1]}")
        return self


def _curve_key(options: RdOptions) -> tuple[Any, ...]:
    return (tuple(options.levels), tuple(options.anchors), options.curve, options.rounding)


class RdScorer:
    name: ClassVar[str] = "rd"
    Options: ClassVar[type[PluginOptions]] = RdOptions
    needs: ClassVar[frozenset[str]] = frozenset({"gram", "input_sq_norm", "residual_energy", "output_gain"})
    #: Per-linear curves of the current pass, shared by every rd-style scorer instance (``rd``, ``evo``)
    #: so that a bench scoring several granularities, or both scorers, computes each linear once.
    #: A weak reference to the Gram tells a new pass from the current one without keeping it alive.
    _curves: ClassVar[dict[tuple[Any, ...], tuple[weakref.ref[torch.Tensor], torch.Tensor]]] = {}

    def __init__(self, options: Any = None) -> None:
        self.options: RdOptions = options if options is not None else RdOptions()

    def linear_curve(self, info: LinearInfo, stats: LinearStats) -> torch.Tensor:
        """The (un-normalised) error curve of one linear over ``levels``, float64."""
        gram = stats.require("gram")
        key = (info.name, *_curve_key(self.options))
        cached = self._curves.get(key)
        if cached is not None and cached[0]() is gram:
            return cached[1]
        options = self.options
        if options.curve == "sparsegpt":
            exact = sparsegpt_error_curve(info.weight, gram, options.anchors)
            xs, ys = [0.0, *options.anchors], [0.0, *exact.tolist()]
            if options.anchors[0] <= 0.0:
                xs, ys = xs[1:], ys[1:]
            curve = torch.tensor(_interpolate_all(xs, ys, options.levels), dtype=torch.float64)
        else:
            sq_norm = stats.require("input_sq_norm")
            curve = anchored_wanda_curve(info.weight, gram, sq_norm, options.levels, options.anchors, options.rounding)
        stale = [k for k, (ref, _) in self._curves.items() if ref() is None]
        for k in stale:
            del self._curves[k]
        self._curves[key] = (weakref.ref(gram), curve)
        return curve

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> list[float]:
        curves = [self.linear_curve(info, stats[info.name]) for info in unit.linears]
        if self.options.output_norms:
            gains = [float(stats[info.name].require("output_gain").reshape(-1)[0]) for info in unit.linears]
            curves = [curve * gain for curve, gain in zip(curves, gains, strict=True)]
        curve = torch.stack(curves).sum(0)
        if self.options.normalise == "residual":
            energy = float(stats[unit.linears[0].name].require("residual_energy").reshape(-1)[0])
            curve = curve / max(energy, 1e-30)
        return [float(v) for v in curve]

    def finish(self, values: Mapping[str, Any], target: float, granularity: str) -> Scores:
        levels = list(self.options.levels)
        curves = {name: [float(v) for v in value] for name, value in values.items()}
        for name, curve in curves.items():
            if len(curve) != len(levels):
                raise ValueError(f"unit {name!r} has a curve of {len(curve)} points for {len(levels)} levels")
        at_target = {name: _interpolate_all(levels, curve, [target])[0] for name, curve in curves.items()}
        return Scores(values=at_target, higher_is_important=True, spread=0.0, curves=curves, levels=levels)


def _interpolate_all(x: Sequence[float], y: Sequence[float], at: Sequence[float]) -> list[float]:
    import numpy as np

    return [float(v) for v in np.interp(list(at), list(x), list(y))]


@hookimpl
def lsaf_register_scorers(register: Any) -> None:
    register(RdScorer)

"""The ``evo`` scorer: an EvoPress-style search for the allocation, on the model itself.

    lsaf run --scorer evo --allocator layer|block|projection [--scorer-opt generations=20] [--resume]

After Sieberling et al., "EvoPress: Accurate Dynamic Model Compression via Evolutionary Search"
(ICML 2025; code IST-DASLab/EvoPress), re-implemented in :mod:`lsa_framework.allocators.evolution`:
a (1 + λ) evolutionary search over per-unit levels of a database in which every level step prunes the
same number of weights, so that *level-switch* mutations (one unit a level up, another a level down)
keep the pruned-weight budget exact; each generation's offspring go through *multi-step selection*
(all on a few calibration tokens, the best few on more, ...), the parent competing in the last stage.
Fitness is the KL divergence of the pruned model's next-token distribution from the dense model's on
calibration windows (never the evaluation text), measured by the engine through the declared
``search`` capability (:class:`~lsa_framework.types.SearchContext`): each candidate is pruned from
the dense weights with the dense model's statistics (those of ``--pipeline basic``, gathered in the
one scoring pass) by the run's own pruner, so the database costs no extra pass.

Start: the search starts from the best heuristic allocation. The scores are those of ``rd`` (error
curves; the allocator turns them into the rate–distortion allocation) plus each unit's DLP score, so
the candidates are ``rd``, ``dlp`` (DLP's band mapping with its default α = 0.15, through the same
allocator) and ``uniform``; with ``start=best`` (the default) the one with the lowest KL on the last
selection stage's token count (its own calibration windows) is taken, and the level database is
centred on it (EvoPress centres it on the uniform profile; centring on the start keeps the start
inside the database whatever its spread). The allocation found is measured at the end on the same
windows as the start candidates (``found_fitness`` in the record), the one comparison of start and
result on equal text.

Defaults, scaled down for a CPU: the paper's unstructured-sparsity search uses 64 offspring,
survivors 8 → 2 → 1 on 2048 → 16384 → 65536 tokens and 400 generations, i.e. ~10⁵ forwards of 2048
tokens; on one CPU thread the default model runs ~100–150 tokens/s, so here 8 offspring, survivors
2 → 1 on 128 → 512 tokens, 8 generations. A stage's windows are always the run's ``seqlen`` long,
ceil(tokens / seqlen) of them, so a stage never reads fewer than ``seqlen`` tokens: with
``--seqlen 512`` both default stages use one window (a generation is then ~11 pruned and 2 dense
forwards of 512 tokens); lower ``seqlen`` or raise ``tokens`` for selection to narrow in steps.
Raise ``generations`` (or give ``seconds``, a wall-time budget) where more time is available.
``--resume`` continues an interrupted search (the state is saved after every generation beside the
output) with the same options; the options are part of the run's identity, so a larger budget is a
new run.

Determinism: the mutation and the calibration windows of every selection stage are functions of
(seed, generation, stage) only, so a search is identical whether or not it was interrupted, and the
same seed gives the same allocation. ``seed`` defaults to the run's ``--seed``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from lsa_framework.allocators.evolution import (
    SearchConfig,
    SearchState,
    default_step,
    evolve,
    start,
    step_database,
)
from lsa_framework.errors import BadInputError
from lsa_framework.hookspecs import hookimpl
from lsa_framework.scorers.dlp import DlpOptions
from lsa_framework.scorers.functions import dlp_score, wanda_metric
from lsa_framework.scorers.rd import RdOptions, RdScorer
from lsa_framework.storage.atomic import make_folder, write_json
from lsa_framework.types import LinearStats, PluginOptions, Scores, SearchContext, Unit

STARTS = ("rd", "dlp", "uniform")


class EvoOptions(RdOptions):
    generations: int | None = Field(default=8, ge=0, description="generations in total (None: only `seconds`)")
    seconds: float | None = Field(default=None, gt=0, description="wall-time budget of this run's search")
    offspring: int = Field(default=8, ge=1, description="offspring per generation")
    survivors: list[int] = Field(default_factory=lambda: [2, 1], description="kept after each selection stage")
    tokens: list[int] = Field(default_factory=lambda: [128, 512], description="calibration tokens per stage")
    max_flips: int = Field(default=3, ge=1, description="at most this many level switches per offspring")
    num_levels: int = Field(default=8, ge=1, description="levels on each side of the start, per unit")
    step: int | None = Field(default=None, ge=1, description="weights per level (None: EvoPress's default)")
    start: Literal["best", "rd", "dlp", "uniform"] = Field(default="best", description="the starting allocation")
    seed: int | None = Field(default=None, description="search seed (None: the run's --seed)")

    @model_validator(mode="after")
    def _search_settings(self) -> EvoOptions:
        if self.generations is None and self.seconds is None:
            raise ValueError("give the search a budget: generations, seconds, or both")
        SearchConfig(self.offspring, tuple(self.survivors), tuple(self.tokens), self.max_flips)  # checks them
        return self


class EvoScorer(RdScorer):
    name: ClassVar[str] = "evo"
    Options: ClassVar[type[PluginOptions]] = EvoOptions
    needs: ClassVar[frozenset[str]] = RdScorer.needs
    capabilities: ClassVar[frozenset[str]] = frozenset({"search"})

    def __init__(self, options: Any = None) -> None:
        super().__init__(options if options is not None else EvoOptions())
        self.options: EvoOptions

    def score(self, unit: Unit, stats: Mapping[str, LinearStats]) -> list[float]:
        """[DLP score, *rd curve]: what the starting candidates need, stored with the run's scores."""
        metrics = [wanda_metric(info.weight, stats[info.name].require("input_sq_norm")) for info in unit.linears]
        return [dlp_score(metrics, DlpOptions().reduce), *super().score(unit, stats)]

    def finish(self, values: Mapping[str, Any], target: float, granularity: str) -> Scores:
        curves = super().finish({name: list(value)[1:] for name, value in values.items()}, target, granularity)
        return Scores(
            values={name: float(value[0]) for name, value in values.items()},
            higher_is_important=False,
            spread=DlpOptions().alpha,
            curves=curves.curves,
            levels=curves.levels,
        )

    def search(self, context: SearchContext) -> dict[str, float]:
        options = self.options
        seed = options.seed if options.seed is not None else context.seed
        saved = _read_state(context.state_file) if context.resume else None
        names = [u.name for u in context.units]
        starts = {
            "rd": dict(context.start),
            "dlp": context.allocate(Scores(dict(context.scores.values), False, context.scores.spread)),
            "uniform": dict.fromkeys(names, context.target),
        }
        # The start candidates, and at the end the allocation found, are measured on the same windows,
        # so that the record shows what the search gained (its own KLs are on fresh windows each stage).
        tokens, sample = options.tokens[-1], _seed(seed, "start")
        if saved is not None and saved.get("start") in starts:
            chosen, start_fitness = str(saved["start"]), dict(saved.get("start_fitness", {}))
        elif options.start != "best":
            chosen = options.start
            start_fitness = {chosen: context.fitness(starts[chosen], tokens, sample)}
        else:
            start_fitness = {name: context.fitness(profile, tokens, sample) for name, profile in starts.items()}
            chosen = min(STARTS, key=lambda name: (start_fitness[name], STARTS.index(name)))
        centre = starts[chosen]
        sizes = {name: int(context.sizes[name]) for name in names}
        step = options.step or default_step(list(sizes.values()), context.target, options.num_levels)
        database, initial = step_database(sizes, context.target, step, options.num_levels, centre=centre)
        config = SearchConfig(
            options.offspring, tuple(options.survivors), tuple(options.tokens), options.max_flips, seed
        )
        state = None
        if saved is not None:
            try:
                found = SearchState.from_json(json.dumps(saved["state"]))
            except (KeyError, TypeError, ValueError):
                found = None
            if found is not None and found.database == database.digest() and found.config == config:
                state = found
        if state is None:
            state = start(database, initial, config)

        def fitness(levels: Any, tokens: int, sample_seed: int) -> float:
            return context.fitness(database.sparsities(levels), tokens, sample_seed)

        def after_generation(current: SearchState) -> None:
            if context.state_file is not None:
                _write_state(context.state_file, chosen, start_fitness, current)
            context.progress(
                current.generation,
                options.generations,
                f"generation {current.generation}: KL {current.fitness:.5f} ({current.evaluations} evaluations)",
            )

        context.progress(state.generation, options.generations, f"search from {chosen} ({start_fitness})")
        if options.generations is None or state.generation < options.generations:
            evolve(database, state, fitness, options.generations, options.seconds, after_generation)
        allocation = database.sparsities(state.parent)
        context.record.update(
            {
                "start": chosen,
                "start_fitness": start_fitness,
                "found_fitness": context.fitness(allocation, tokens, sample),
                "generations": state.generation,
                "fitness": state.fitness,
                "evaluations": state.evaluations,
                "tokens": state.tokens,
                "weight_step": step,
                "history": [h["fitness"] for h in state.history],
                "seconds": round(state.seconds, 2),
            }
        )
        return allocation


def _seed(seed: int, what: str) -> int:
    return int.from_bytes(hashlib.sha256(f"evo/{seed}/{what}".encode()).digest()[:4], "big") >> 1


def _read_state(path: Path | None) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(
            f"The search state {path} is damaged ({type(exc).__name__}); delete it to start over."
        ) from None
    return data if isinstance(data, dict) else None


def _write_state(path: Path, chosen: str, start_fitness: dict[str, float], state: SearchState) -> None:
    make_folder(Path(path).parent)
    write_json(Path(path), {"start": chosen, "start_fitness": start_fitness, "state": json.loads(state.to_json())})


@hookimpl
def lsaf_register_scorers(register: Any) -> None:
    register(EvoScorer)

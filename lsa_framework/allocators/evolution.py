"""EvoPress-style search over per-unit sparsity levels at an exact pruned-weight budget.

Sieberling, Kuznedelev, Kurtic, Alistarh, "EvoPress: Accurate Dynamic Model Compression via
Evolutionary Search" (ICML 2025), code IST-DASLab/EvoPress (``evo_prune_search.py``, ``prune.py``).
A (1 + λ) evolutionary algorithm: each generation makes λ offspring of the single parent by
*level-switch mutation* (one unit one level up, another one level down, 1–3 times), and keeps the
fittest by *multi-step selection*: all offspring are scored on a few calibration tokens, the best few
on more, and so on; before the last stage the parent joins (elitism), the last stage keeps one, which
becomes the next parent. Fitness (lower is better) is the caller's: EvoPress uses the KL divergence of
the pruned model's next-token distribution from the dense model's on calibration windows.

The level database (:class:`LevelDatabase`): unit u's level i prunes ``counts[u][i]`` weights.
:func:`step_database` builds EvoPress's: level l ∈ [−a_u, b_u] prunes base_u + l·Δ weights, with one
weight step Δ for every unit (their ``--weights_diff``), so each step is a different sparsity step
Δ/N_u for units of different sizes, and a switch (u up, v down) keeps the pruned total exactly.

How the budget stays exact with unequal unit sizes: a switch pairs an up-step of unit u with a
down-step of a unit v whose step prunes exactly as many weights. With :func:`step_database` every
pair qualifies (EvoPress's pruning search); with a shared sparsity grid only units of equal size pair
(EvoPress's quantisation search with its size ``--group_rule``). A database in which some unit has no
partner simply never moves it; every mutation keeps Σ counts == budget, which
:func:`mutate` asserts.

Where we differ from the reference code, on purpose:

- The up-unit is drawn uniformly among units that can go up and have a partner, then the partner
  uniformly among the others that can go down by the same count; the reference draws both
  independently and allows them to coincide (a wasted flip). Offspring equal to the parent are
  redrawn (the reference may evaluate the parent as an offspring).
- Randomness is a function of (seed, generation) only, and the calibration sample of every stage is
  named by a ``sample_seed`` derived from (seed, generation, stage) that the caller turns into
  windows (the reference draws windows from the global RNG). So the state is small JSON (no RNG
  state), a resumed search is identical to an uninterrupted one, and all candidates of a stage are
  compared on the same windows, as in the reference.
- Fitness NaN counts as +inf; ties in selection go to the earlier candidate (offspring in the order
  they were drawn, the parent last).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lsa_framework.allocators.mapping import MAX_SPARSITY
from lsa_framework.errors import BadInputError
from lsa_framework.pruners.masks import exact_count

__all__ = [
    "FitnessFn",
    "LevelDatabase",
    "SearchConfig",
    "SearchState",
    "default_step",
    "evolve",
    "levels_from_sparsities",
    "mutate",
    "start",
    "step_database",
]

#: fitness(levels, tokens, sample_seed) → value to minimise (e.g. KL to the dense model) of the model
#: pruned at ``levels``, measured on ``tokens`` calibration tokens chosen by ``sample_seed``.
FitnessFn = Callable[[Sequence[int], int, int], float]


@dataclass(frozen=True)
class LevelDatabase:
    """Per-unit levels: ``counts[u][i]`` weights pruned at level i (strictly increasing in i)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    counts: tuple[tuple[int, ...], ...]
    budget: int  # Σ_u counts[u][level_u] every profile of the search keeps

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.sizes) == len(self.counts)) or not self.names:
            raise BadInputError("A level database needs one size and one count list per unit.")
        for name, size, counts in zip(self.names, self.sizes, self.counts, strict=True):
            if not counts or any(b <= a for a, b in itertools.pairwise(counts)):
                raise BadInputError(f"The levels of {name!r} must prune strictly increasing counts, got {counts}.")
            if counts[0] < 0 or counts[-1] > size:
                raise BadInputError(f"The levels of {name!r} must prune between 0 and {size} weights.")

    def total(self, levels: Sequence[int]) -> int:
        return sum(c[i] for c, i in zip(self.counts, levels, strict=True))

    def sparsities(self, levels: Sequence[int]) -> dict[str, float]:
        return {n: c[i] / s for n, s, c, i in zip(self.names, self.sizes, self.counts, levels, strict=True)}

    def check(self, levels: Sequence[int]) -> None:
        """Raise unless ``levels`` names a valid level of every unit and prunes exactly ``budget``."""
        if len(levels) != len(self.names) or any(not 0 <= i < len(c) for c, i in zip(self.counts, levels, strict=True)):
            raise BadInputError(f"Levels {list(levels)} do not fit the database of {len(self.names)} units.")
        if self.total(levels) != self.budget:
            raise BadInputError(f"Levels prune {self.total(levels)} weights, the budget is {self.budget}.")

    def digest(self) -> str:
        """A fingerprint, stored in the search state so a resume with another database is refused."""
        text = json.dumps([self.names, self.sizes, self.counts, self.budget])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_step(sizes: Sequence[int], target: float, num_levels: int = 8) -> int:
    """EvoPress's default weight step, 0.5·min(s, 1 − s)/num_levels·(size of the smallest unit).

    The reference uses hidden_size² (the q_proj size, its smallest linear without GQA); the smallest
    unit plays that role at any granularity, so the smallest unit spans target ± min(s, 1 − s)/2.
    """
    return max(1, int(0.5 * min(target, 1.0 - target) / num_levels * min(sizes)))


def step_database(
    sizes: Mapping[str, int],
    target: float,
    step: int,
    num_levels: int = 8,
    max_sparsity: float = MAX_SPARSITY,
    centre: Mapping[str, float] | None = None,
) -> tuple[LevelDatabase, list[int]]:
    """EvoPress's database: unit u's level l ∈ [−a_u, b_u] prunes base_u + l·step weights.

    base_u ≈ N_u·target (or N_u·centre_u: a database around another starting allocation, whose
    size-weighted mean must be the target), rounded by largest remainder so that Σ base_u =
    round(target·ΣN) exactly; a_u, b_u ≤ num_levels, cut where the count would leave
    [0, max_sparsity·N_u] (as the reference cuts at [0, 1]). Returns the database (budget Σ base_u)
    and the centre profile (every l = 0), as level indices.
    """
    names = list(sizes)
    if step < 1 or num_levels < 0:
        raise BadInputError(f"The weight step must be >= 1 and num_levels >= 0, got {step} and {num_levels}.")
    if not 0.0 <= target <= max_sparsity:
        raise BadInputError(f"Target sparsity {target} is outside [0, {max_sparsity}].")
    at = {n: float(target) for n in names} if centre is None else {n: float(centre[n]) for n in names}
    if any(not 0.0 <= v <= max_sparsity for v in at.values()):
        raise BadInputError(f"The centre of a level database must lie in [0, {max_sparsity}] for every unit.")
    exact = {n: sizes[n] * at[n] for n in names}
    base = {n: math.floor(exact[n]) for n in names}
    remainder = exact_count(sum(sizes.values()), target) - sum(base.values())
    if abs(remainder) > len(names):
        raise BadInputError(f"The centre allocation's mean is not the target sparsity {target}.")
    if remainder >= 0:
        for n in sorted(names, key=lambda n: (-(exact[n] - base[n]), names.index(n)))[:remainder]:
            base[n] += 1
    else:  # the centre rounds above the budget: take the weights back where the fraction was smallest
        for n in sorted((n for n in names if base[n] > 0), key=lambda n: (exact[n] - base[n], names.index(n)))[
            :-remainder
        ]:
            base[n] -= 1
    counts, uniform = [], []
    for n in names:
        top = math.floor(max_sparsity * sizes[n])
        down = min(num_levels, base[n] // step)
        up = min(num_levels, max(top - base[n], 0) // step)
        counts.append(tuple(base[n] + level * step for level in range(-down, up + 1)))
        uniform.append(down)
    database = LevelDatabase(tuple(names), tuple(sizes[n] for n in names), tuple(counts), sum(base.values()))
    return database, uniform


def _nearest(counts: Sequence[int], wanted: float) -> int:
    return min(range(len(counts)), key=lambda i: (abs(counts[i] - wanted), i))


def levels_from_sparsities(database: LevelDatabase, sparsities: Mapping[str, float]) -> list[int]:
    """The database profile nearest to an allocation (e.g. the best heuristic's), at the exact budget.

    Each unit takes the level nearest to N_u·s_u pruned weights; then, while the total misses the
    budget, the single one-level move that brings the total closer and adds the least distance to
    the wanted counts is made (ties to the earlier unit). Raises if no such move exists.
    """
    wanted = [sparsities[n] * s for n, s in zip(database.names, database.sizes, strict=True)]
    levels = [_nearest(c, w) for c, w in zip(database.counts, wanted, strict=True)]
    while (gap := database.total(levels) - database.budget) != 0:
        direction = -1 if gap > 0 else 1
        best: tuple[float, int] | None = None
        for u, (c, w) in enumerate(zip(database.counts, wanted, strict=True)):
            i = levels[u] + direction
            if not 0 <= i < len(c) or abs(gap + c[i] - c[levels[u]]) >= abs(gap):
                continue
            cost = abs(c[i] - w) - abs(c[levels[u]] - w)
            if best is None or cost < best[0]:
                best = (cost, u)
        if best is None:
            raise BadInputError("No profile of the level database near this allocation prunes exactly the budget.")
        levels[best[1]] += direction
    return levels


def _switch(database: LevelDatabase, levels: list[int], rng: random.Random) -> bool:
    """One level switch in place: a unit one level up, a partner whose step is equal one level down."""
    up_steps: dict[int, list[int]] = {}
    down_steps: dict[int, list[int]] = {}
    for u, (c, i) in enumerate(zip(database.counts, levels, strict=True)):
        if i + 1 < len(c):
            up_steps.setdefault(c[i + 1] - c[i], []).append(u)
        if i > 0:
            down_steps.setdefault(c[i] - c[i - 1], []).append(u)
    candidates = [u for step, units in up_steps.items() for u in units if any(v != u for v in down_steps.get(step, []))]
    if not candidates:
        return False
    candidates.sort()
    u = rng.choice(candidates)
    step = database.counts[u][levels[u] + 1] - database.counts[u][levels[u]]
    v = rng.choice([v for v in down_steps[step] if v != u])
    levels[u] += 1
    levels[v] -= 1
    return True


def mutate(database: LevelDatabase, parent: Sequence[int], rng: random.Random, max_flips: int = 3) -> list[int]:
    """An offspring by level-switch mutation: min(U{1..max_flips}, U{1..max_flips}) switches (biased to
    few, as in the reference). The pruned total stays exactly the parent's."""
    child = list(parent)
    flips = min(rng.randint(1, max_flips), rng.randint(1, max_flips))
    for _ in range(flips):
        if not _switch(database, child, rng):
            break
    assert database.total(child) == database.total(parent)
    return child


@dataclass(frozen=True)
class SearchConfig:
    """Hyper-parameters. Defaults: the reference's unstructured-sparsity script (``run_prune_search.sh``):
    64 offspring, survivors 8 → 2 → 1 on 2048 → 16384 → 65536 tokens, 400 generations."""

    offspring: int = 64
    survivors: tuple[int, ...] = (8, 2, 1)
    tokens: tuple[int, ...] = (2048, 16384, 65536)
    max_flips: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.survivors) != len(self.tokens) or not self.survivors:
            raise BadInputError("Multi-step selection needs one survivor count per token count.")
        if self.survivors[-1] != 1 or any(s < 1 for s in self.survivors) or self.offspring < 1:
            raise BadInputError("The last selection stage keeps exactly one candidate; every stage at least one.")
        if self.max_flips < 1 or any(t < 1 for t in self.tokens):
            raise BadInputError("max_flips and every token count must be positive.")


@dataclass
class SearchState:
    """Everything a search needs to continue; :meth:`to_json` / :meth:`from_json` round-trip it."""

    config: SearchConfig
    database: str  # LevelDatabase.digest()
    parent: list[int]
    fitness: float | None = None  # the parent's fitness in the last stage that selected it
    generation: int = 0  # generations completed
    evaluations: int = 0  # fitness calls so far
    tokens: int = 0  # calibration tokens evaluated so far (Σ tokens over calls)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per generation
    seconds: float = 0.0  # wall time spent in evolve (informational; not part of the result)

    def to_json(self) -> str:
        return json.dumps(asdict(self), allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> SearchState:
        data = json.loads(text)
        config = data.pop("config")
        config = SearchConfig(**{**config, "survivors": tuple(config["survivors"]), "tokens": tuple(config["tokens"])})
        return cls(config=config, **data)


def start(database: LevelDatabase, initial: Sequence[int], config: SearchConfig | None = None) -> SearchState:
    """A fresh search from the profile ``initial`` (level indices; e.g. :func:`levels_from_sparsities`)."""
    database.check(initial)
    return SearchState(config=config or SearchConfig(), database=database.digest(), parent=list(initial))


def _derived(*parts: object) -> str:
    return "/".join(str(p) for p in ("evopress", *parts))


def _sample_seed(seed: int, generation: int, stage: int) -> int:
    return int.from_bytes(hashlib.sha256(_derived(seed, generation, stage).encode()).digest()[:4], "big") >> 1


def _offspring(database: LevelDatabase, parent: list[int], config: SearchConfig, rng: random.Random) -> list[list[int]]:
    children: list[list[int]] = []
    seen = {tuple(parent)}
    # A tiny neighbourhood may hold fewer distinct offspring than asked for; stop trying after a while.
    for _ in range(100 * config.offspring):
        if len(children) == config.offspring:
            break
        child = mutate(database, parent, rng, config.max_flips)
        if tuple(child) not in seen:
            seen.add(tuple(child))
            children.append(child)
    return children


def _generation(database: LevelDatabase, state: SearchState, fitness: FitnessFn) -> None:
    config = state.config
    rng = random.Random(_derived(config.seed, state.generation))  # str seeds hash with SHA-512: stable everywhere
    candidates = _offspring(database, state.parent, config, rng)
    scores: list[float] = []
    last = len(config.survivors) - 1
    for stage, (keep, tokens) in enumerate(zip(config.survivors, config.tokens, strict=True)):
        if stage == last and state.parent not in candidates:
            candidates.append(list(state.parent))  # elitism: the parent competes in the final stage
        sample = _sample_seed(config.seed, state.generation, stage)
        values = []
        for candidate in candidates:
            value = float(fitness(list(candidate), tokens, sample))
            values.append(math.inf if math.isnan(value) else value)
        state.evaluations += len(candidates)
        state.tokens += len(candidates) * tokens
        ranked = sorted(range(len(candidates)), key=lambda i: (values[i], i))[:keep]
        candidates = [candidates[i] for i in ranked]
        scores = [values[i] for i in ranked]
    state.parent, state.fitness = candidates[0], scores[0]
    database.check(state.parent)
    state.generation += 1
    state.history.append({"generation": state.generation, "fitness": state.fitness, "evaluations": state.evaluations})


def evolve(
    database: LevelDatabase,
    state: SearchState,
    fitness: FitnessFn,
    generations: int | None = None,
    seconds: float | None = None,
    on_generation: Callable[[SearchState], None] | None = None,
) -> SearchState:
    """Run generations on ``state`` (in place, also returned) until it has completed ``generations``
    in total, or this call has run ``seconds`` of wall time (checked before each generation), or both.

    ``on_generation(state)`` runs after every generation, e.g. to save ``state.to_json()``; a search
    resumed from any saved state reaches exactly the state an uninterrupted one would.
    """
    if state.database != database.digest():
        raise BadInputError("This search state belongs to another level database; start a new search.")
    if generations is None and seconds is None:
        raise BadInputError("Give the search a budget: a number of generations, a wall time, or both.")
    began = time.monotonic()
    while generations is None or state.generation < generations:
        if seconds is not None and time.monotonic() - began >= seconds:
            break
        tick = time.monotonic()
        _generation(database, state, fitness)
        state.seconds += time.monotonic() - tick
        if on_generation is not None:
            on_generation(state)
    return state

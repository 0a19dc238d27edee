"""The grid file of ``lsaf bench``: axes whose cross product are the cells, plus shared settings.

    # grid.yaml
    models: [smollm2-135m]
    scorers: [uniform, owl, dlp, lse]
    allocators: [layer, block, projection]
    pruners: [wanda, sparsegpt]
    sparsities: [0.5, 0.6, 0.7]
    patterns: [unstructured]
    run: {nsamples: 32, seqlen: 512, eval: [perplexity], eval_opts: {perplexity: {max_tokens: 16384}}}
    scorer_opts: {lse: {group_size: 128}}

Any axis may be a single value. With an N:M pattern the sparsity axis does not apply (N:M fixes
it), so those cells are collapsed to one per pattern.

Seeds: ``seeds: [0, 1, 2]`` repeats every cell with each calibration seed (``run.seed`` then must not
be set); the tables show mean ± sample std over the seeds, and ``baseline: uniform`` (a scorer, or a
list of them) adds, for every other scorer, the paired difference to that scorer at the same
pruner, allocator and sparsity, seed by seed, flagged when it is within seed noise
(:mod:`lsa_framework.bench.seeds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lsa_framework.config import RunConfig, build_config, first_error, load_config_file
from lsa_framework.errors import BadInputError
from lsa_framework.types import Pattern

AXES = ("models", "scorers", "allocators", "pruners", "sparsities", "patterns")


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=lambda: ["smollm2-135m"])
    scorers: list[str] = Field(default_factory=lambda: ["uniform", "lse"])
    allocators: list[str] = Field(default_factory=lambda: ["layer"])
    pruners: list[str] = Field(default_factory=lambda: ["wanda"])
    sparsities: list[float] = Field(default_factory=lambda: [0.5])
    patterns: list[str] = Field(default_factory=lambda: ["unstructured"])
    seeds: list[int] | None = Field(default=None, description="Calibration seeds; every cell runs with each.")
    baseline: list[str] = Field(default_factory=list, description="Scorers the others are compared with, seed by seed.")
    run: dict[str, Any] = Field(default_factory=dict, description="RunConfig fields shared by every cell.")
    scorer_opts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    allocator_opts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    pruner_opts: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator(*AXES, mode="before")
    @classmethod
    def _scalar_to_list(cls, value: Any) -> Any:
        return value if isinstance(value, list) else [value]

    @field_validator("seeds", "baseline", mode="before")
    @classmethod
    def _optional_scalar_to_list(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, list) else [value]

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return value

    @model_validator(mode="after")
    def _one_seed_setting(self) -> GridConfig:
        if self.seeds is not None and "seed" in self.run:
            raise ValueError("give the calibration seed either as the seeds axis or as run.seed, not both")
        unknown = [b for b in self.baseline if b not in self.scorers]
        if unknown:
            raise ValueError(f"baseline {unknown} is not among the grid's scorers {self.scorers}")
        return self

    @field_validator("run")
    @classmethod
    def _no_axis_in_run(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = {"model", "scorer", "allocator", "pruner", "sparsity", "pattern"} & set(value)
        if clash:
            raise ValueError(f"{', '.join(sorted(clash))} belong to the grid's axes, not to run")
        own = {"output", "overwrite"} & set(value)
        if own:
            raise ValueError(
                f"{', '.join(sorted(own))} are lsaf bench's own --output/--overwrite flags, not per-cell settings"
            )
        return value


@dataclass(frozen=True)
class Cell:
    model: str
    scorer: str
    allocator: str
    pruner: str
    sparsity: float
    pattern: str
    seed: int | None = None  # the calibration seed, when the grid has a seeds axis

    @property
    def id(self) -> str:
        text = f"{self.model}|{self.scorer}|{self.allocator}|{self.pruner}|{self.sparsity:g}|{self.pattern}"
        return text if self.seed is None else f"{text}|seed={self.seed}"

    @property
    def method(self) -> str:
        """The row label of the paper's tables, e.g. ``wanda + lse (layer)``."""
        return f"{self.pruner} + {self.scorer} ({self.allocator})"


def cells(grid: GridConfig) -> list[Cell]:
    """The cross product of the axes, N:M cells collapsed, in a stable order."""
    result: list[Cell] = []
    seen: set[str] = set()
    seeds: list[int | None] = list(grid.seeds) if grid.seeds is not None else [None]
    for model in grid.models:
        for seed in seeds:
            for pattern_text in grid.patterns:
                pattern = Pattern.parse(pattern_text)
                sparsities = [pattern.sparsity] if pattern.sparsity is not None else grid.sparsities
                for pruner in grid.pruners:
                    for scorer in grid.scorers:
                        for allocator in grid.allocators:
                            for sparsity in sparsities:
                                cell = Cell(model, scorer, allocator, pruner, float(sparsity), str(pattern), seed)
                                if cell.id not in seen:
                                    seen.add(cell.id)
                                    result.append(cell)
    return result


def cell_config(grid: GridConfig, cell: Cell) -> RunConfig:
    """The RunConfig a cell would have as a single ``lsaf run``."""
    pattern = Pattern.parse(cell.pattern)
    return build_config(
        {
            **grid.run,
            "model": cell.model,
            "scorer": cell.scorer,
            "allocator": cell.allocator,
            "pruner": cell.pruner,
            "sparsity": None if pattern.is_nm else cell.sparsity,
            "pattern": cell.pattern,
            "scorer_opts": grid.scorer_opts.get(cell.scorer, {}),
            "allocator_opts": grid.allocator_opts.get(cell.allocator, {}),
            "pruner_opts": grid.pruner_opts.get(cell.pruner, {}),
            **({"seed": cell.seed} if cell.seed is not None else {}),
        }
    )


def load_grid(path: Path) -> GridConfig:
    data = load_config_file(path)
    if not data:
        raise BadInputError(
            f"The grid file {path} is empty; list at least the axes you want, e.g. `scorers: [uniform, lse]`."
        )
    try:
        return GridConfig(**data)
    except ValidationError as exc:
        raise BadInputError(f"Invalid grid file {path} ({first_error(exc)}); see `lsaf bench --help`.") from exc

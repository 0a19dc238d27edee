"""Run configuration: one pydantic model for the CLI, config files and the Python API.

    lsaf run --config run.yaml --sparsity 0.7      # flags override the file

Plugin names are checked against the registry and plugin options against each plugin's own
``Options`` model here, before any model is loaded, so a typo costs a second, not a model load.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lsa_framework import registry
from lsa_framework.errors import BadInputError
from lsa_framework.types import Pattern

DEFAULT_SPARSITY = 0.5


class RunConfig(BaseModel):
    """Everything that decides what a run does; stored verbatim in run.json."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = "smollm2-135m"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    scorer: str = "lse"
    allocator: str = "layer"
    pruner: str = "wanda"
    sparsity: float | None = Field(
        default=None, description="Target fraction of pruned weights; defaults to N/M for N:M, else 0.5."
    )
    pattern: str = "unstructured"
    calibration: str = Field(default="builtin", description="A dataset name (builtin, wikitext2, c4) or a file.")
    nsamples: int = Field(default=128, gt=0)
    seqlen: int = Field(default=2048, gt=0)
    seed: int = 0
    batch_size: int = Field(default=8, gt=0, description="Calibration sequences per forward.")
    eval: list[str] = Field(default_factory=lambda: ["perplexity", "sparsity"])
    scorer_opts: dict[str, Any] = Field(default_factory=dict)
    allocator_opts: dict[str, Any] = Field(default_factory=dict)
    pruner_opts: dict[str, Any] = Field(default_factory=dict)
    calibration_opts: dict[str, Any] = Field(default_factory=dict)
    eval_opts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    output: Path | None = None
    overwrite: bool = False
    resume: bool = Field(default=False, description="Continue an interrupted run with the same settings and output.")
    threads: int | None = Field(default=None, gt=0, description="torch CPU threads (default: all cores).")
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or auto; layers are onloaded one at a time.")
    pipeline: Literal["sequential", "basic"] = Field(
        default="sequential",
        description="sequential: each layer is pruned from the inputs of the already-pruned layers (the papers); "
        "basic: from the dense model's, gathered in the scoring pass (one forward, different masks).",
    )
    offload: Literal["none", "disk"] = Field(
        default="none", description="disk: keep decoder layers in the safetensors files, one in memory at a time."
    )

    @field_validator("sparsity")
    @classmethod
    def _sparsity_in_range(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {value}")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern_parses(cls, value: str) -> str:
        return str(Pattern.parse(value))

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str) -> str:
        if value not in ("cpu", "auto", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {value!r}")
        return value

    @property
    def torch_device(self) -> torch.device:
        """The compute device; fails clearly when CUDA is asked for and absent."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BadInputError(
                f"--device {self.device} was asked for but no CUDA device is available; use --device cpu."
            )
        return torch.device(self.device)

    @property
    def parsed_pattern(self) -> Pattern:
        return Pattern.parse(self.pattern)

    @property
    def target_sparsity(self) -> float:
        fixed = self.parsed_pattern.sparsity
        if fixed is not None:
            return fixed
        return DEFAULT_SPARSITY if self.sparsity is None else self.sparsity

    def check_consistency(self) -> None:
        fixed = self.parsed_pattern.sparsity
        if fixed is not None and self.sparsity is not None and abs(self.sparsity - fixed) > 1e-9:
            raise BadInputError(
                f"--sparsity {self.sparsity} conflicts with --pattern {self.pattern}, which prunes exactly "
                f"{fixed:g}; drop --sparsity or pass --sparsity {fixed:g}."
            )


def first_error(exc: ValidationError) -> str:
    """``field.path: message`` of the first error, on one line whatever the user typed as a key."""
    err = exc.errors()[0]
    field = ".".join(p if isinstance(p, str) and p.isidentifier() else repr(p) for p in err["loc"]) or "config"
    return " ".join(f"{field}: {err['msg']}".split())


def build_config(values: dict[str, Any]) -> RunConfig:
    """Validate raw values into a RunConfig, turning pydantic errors into one sentence."""
    try:
        config = RunConfig(**values)
    except ValidationError as exc:
        raise BadInputError(f"Invalid configuration ({first_error(exc)}); see `lsaf run --help`.") from exc
    except BadInputError:
        raise
    config.check_consistency()
    return config


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON config file into a dict of RunConfig fields."""
    if not path.is_file():
        raise BadInputError(f"Config file {path} does not exist; check the path given to --config.")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:
        raise BadInputError(f"Config file {path} could not be parsed ({exc}); fix its syntax.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInputError(f"Config file {path} must hold a mapping of settings, not {type(data).__name__}.")
    return data


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` → dict, with YAML typing of values (``0.5`` → float, ``true`` → bool)."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BadInputError(f"{flag} {item!r} is not KEY=VALUE; write it like {flag} group_size=128.")
        try:
            result[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            result[key.strip()] = raw
    return result


def plugin_options(kind: str, name: str, raw: dict[str, Any]) -> Any:
    """Validate ``raw`` against the named plugin's ``Options``; errors name the plugin and field."""
    entry = registry.lookup(kind, name)
    try:
        return entry.cls.Options(**raw)
    except ValidationError as exc:
        raise BadInputError(
            f"Invalid option for {kind[:-1]} {name!r} ({first_error(exc)}); "
            f"valid options: {', '.join(entry.cls.Options.model_fields) or 'none'}."
        ) from exc

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
    eval: list[str] = Field(default_factory=lambda: ["perplexity", "sparsity"], description="Evaluators to run.")
    eval_dense: bool = Field(
        default=True, description="Also evaluate the dense model (cached by its content hash), for dense → pruned."
    )
    export: list[str] = Field(
        default_factory=lambda: ["safetensors"], description="Exporters that write the output folder's parts."
    )
    recover: str | None = Field(
        default=None, description="A recoverer to fine-tune the pruned model with, keeping its masks (lora, masked)."
    )
    scorer_opts: dict[str, Any] = Field(default_factory=dict)
    allocator_opts: dict[str, Any] = Field(default_factory=dict)
    pruner_opts: dict[str, Any] = Field(default_factory=dict)
    calibration_opts: dict[str, Any] = Field(default_factory=dict)
    eval_opts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    export_opts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    recover_opts: dict[str, Any] = Field(default_factory=dict)
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

    @field_validator("nsamples", "seqlen", "seed", "batch_size", "threads", "sparsity", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        # YAML's `nsamples: true` would otherwise quietly become 1.
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value

    @field_validator("eval", "export", mode="before")
    @classmethod
    def _eval_from_text(cls, value: Any) -> Any:
        # the same comma-separated text as `--eval perplexity,sparsity`
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("output", mode="before")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        # `output: ~/x` in a config file means the home folder, as it does on the command line
        if isinstance(value, (str, Path)) and str(value).startswith("~"):
            try:
                return Path(value).expanduser()
            except RuntimeError:  # "~someone" with no such user
                raise ValueError(f"{value!r} names a home folder that does not exist") from None
        return value

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _json_unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} is given twice")
        result[key] = value
    return result


def parse_settings_text(text: str, suffix: str) -> Any:
    """YAML (the default), TOML or JSON by file suffix, case-insensitively; duplicate keys are errors."""
    suffix = suffix.lower()
    if suffix == ".toml":
        return tomllib.loads(text)  # TOML itself forbids duplicate keys
    if suffix == ".json":
        return json.loads(text, object_pairs_hook=_json_unique)
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_settings_file(path: Path, what: str, flag: str) -> Any:
    """The parsed content of a settings file, with one sentence for each way it can be unreadable."""
    if not path.is_file():
        raise BadInputError(f"{what} {path} does not exist; check the path given to {flag}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{what} {path} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as exc:
        raise BadInputError(f"{what} {path} cannot be read ({exc.strerror}); check its permissions.") from None
    try:
        return parse_settings_text(text, path.suffix)
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise BadInputError(f"{what} {path} could not be parsed ({reason}); fix its syntax.") from None


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON config file into a dict of RunConfig fields."""
    data = read_settings_file(path, "Config file", "--config")
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

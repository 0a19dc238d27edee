"""lsa_framework: layer-wise sparsity allocation (LSA) and a plugin framework for pruning LLMs.

    lsaf run --scorer lse --allocator layer --pruner wanda --sparsity 0.7

Python users call :func:`prune` with a :class:`RunConfig`; plugin authors use :data:`hookimpl`
and the types in :mod:`lsa_framework.types`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lsa_framework.allocators.mapping import finalize, map_scores
from lsa_framework.errors import BadInputError, LsafError
from lsa_framework.hookspecs import hookimpl

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lsa_framework.config import RunConfig
    from lsa_framework.engine.pipeline import RunResult


def prune(config: RunConfig) -> RunResult:
    """Run the whole pipeline (load, score, allocate, prune, evaluate, save) for ``config``."""
    from lsa_framework.engine.pipeline import run

    return run(config)


def __getattr__(name: str) -> Any:
    # RunConfig and RunResult import torch-heavy modules; load them only when asked for.
    if name == "RunConfig":
        from lsa_framework.config import RunConfig

        return RunConfig
    if name == "RunResult":
        from lsa_framework.engine.pipeline import RunResult

        return RunResult
    raise AttributeError(name)


__all__ = [
    "BadInputError",
    "LsafError",
    "RunConfig",
    "RunResult",
    "__version__",
    "finalize",
    "hookimpl",
    "map_scores",
    "prune",
]

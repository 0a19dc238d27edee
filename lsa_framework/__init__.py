"""lsa_framework: layer-wise sparsity allocation (LSA) and a plugin framework for pruning LLMs.

    lsaf run --scorer lse --allocator layer --pruner wanda --sparsity 0.7

Python users call :func:`prune` with a :class:`RunConfig`; plugin authors use :data:`hookimpl`
and the types in :mod:`lsa_framework.types`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lsa_framework.errors import BadInputError, LsafError
from lsa_framework.hookspecs import hookimpl

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lsa_framework.allocators.mapping import finalize, map_scores
    from lsa_framework.config import RunConfig
    from lsa_framework.result import RunResult


def prune(config: RunConfig) -> RunResult:
    """Run the whole pipeline (load, score, allocate, prune, evaluate, save) for ``config``."""
    from lsa_framework.engine.pipeline import run

    return run(config)


#: Public names that import torch-heavy modules, loaded only when asked for (``import lsa_framework``
#: itself imports neither torch nor transformers).
_LAZY = {
    "RunConfig": "lsa_framework.config",
    "RunResult": "lsa_framework.result",
    "finalize": "lsa_framework.allocators.mapping",
    "map_scores": "lsa_framework.allocators.mapping",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
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

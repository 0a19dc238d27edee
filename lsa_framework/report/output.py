"""Write a run's output folder atomically.

    lsaf run --output out/wanda-50

Everything is written into a hidden temporary sibling of the target and renamed into place at the
end, so an interrupted or failed run never leaves a half-written folder and never destroys the
previous one. An existing folder is replaced only with ``--overwrite``, and only when lsaf wrote it
(see :mod:`lsa_framework.storage.guard`); the check is repeated right before the swap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsa_framework.report.markdown import render_markdown
from lsa_framework.report.plots import plot_sparsity_profile
from lsa_framework.storage.atomic import staged_folder
from lsa_framework.storage.guard import Protected, check_output, write_marker

if TYPE_CHECKING:
    from lsa_framework.engine.pipeline import RunResult

RUN_KIND = "run"
EVAL_KIND = "eval"


def check_output_path(path: Path, overwrite: bool, protected: Sequence[Protected] = ()) -> Path:
    """Fail before any work when the output could not be written as asked; the resolved path."""
    return check_output(path, kind=RUN_KIND, overwrite=overwrite, protected=protected)


def _write_folder(
    kind: str, path: Path, overwrite: bool, protected: Sequence[Protected], fill: Callable[[Path], None]
) -> None:
    """``fill(tmp)`` writes the content; the folder appears at ``path`` complete, with its marker."""
    target = check_output(path, kind=kind, overwrite=overwrite, protected=protected)

    def replace(existing: Path) -> None:
        check_output(existing, kind=kind, overwrite=overwrite, protected=protected)  # it may have changed meanwhile

    with staged_folder(target, lambda tmp: write_marker(tmp, kind), replace) as tmp:
        fill(tmp)


def write_evaluation(result: RunResult, path: Path, overwrite: bool, protected: Sequence[Protected] = ()) -> None:
    """``lsaf eval --output``: run.json (config, model hash, metrics, timings) and report.md."""

    def fill(tmp: Path) -> None:
        (tmp / "run.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        (tmp / "report.md").write_text(render_markdown(result))

    _write_folder(EVAL_KIND, path, overwrite, protected, fill)


def write_output(
    result: RunResult,
    save_model: Callable[[Path], None],
    tokenizer: Any,
    path: Path,
    overwrite: bool,
    protected: Sequence[Protected] = (),
) -> None:
    """``save_model(folder)`` writes the weights (whole, or shard by shard for an offloaded model)."""

    def fill(tmp: Path) -> None:
        save_model(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "run.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        (tmp / "report.md").write_text(render_markdown(result))
        plot_sparsity_profile({result.config.scorer: result.units}, tmp / "sparsity_profile.png")

    _write_folder(RUN_KIND, path, overwrite, protected, fill)

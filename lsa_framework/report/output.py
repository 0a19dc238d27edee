"""Write a run's output folder atomically.

    lsaf run --output out/wanda-50

Everything is written into a hidden temporary sibling of the target and renamed into place at the
end, so an interrupted or failed run never leaves a half-written folder and never destroys the
previous one; an existing folder is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsa_framework.errors import BadInputError
from lsa_framework.report.markdown import render_markdown
from lsa_framework.report.plots import plot_sparsity_profile

if TYPE_CHECKING:
    from lsa_framework.engine.pipeline import RunResult


def check_output_path(path: Path, overwrite: bool) -> None:
    """Fail before any work when the output could not be written as asked."""
    if path.exists() and not path.is_dir():
        raise BadInputError(f"Output path {path} is a file; pass a folder path to --output.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise BadInputError(f"Output folder {path} already exists; pass --overwrite to replace it or choose another.")
    parent = path.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise BadInputError(f"The parent of output path {path} is a file; choose another --output.")


def write_output(
    result: RunResult, save_model: Callable[[Path], None], tokenizer: Any, path: Path, overwrite: bool
) -> None:
    """``save_model(folder)`` writes the weights (whole, or shard by shard for an offloaded model)."""
    check_output_path(path, overwrite)
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old: Path | None = None
    try:
        save_model(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "run.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        (tmp / "report.md").write_text(render_markdown(result))
        plot_sparsity_profile({result.config.scorer: result.units}, tmp / "sparsity_profile.png")
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

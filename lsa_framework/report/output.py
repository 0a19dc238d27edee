"""Write a run's output folder atomically.

    lsaf run --output out/wanda-50 [--export safetensors,masks]

Everything is written into a hidden temporary sibling of the target and renamed into place at the
end, so an interrupted or failed run never leaves a half-written folder and never destroys the
previous one. An existing folder is replaced only with ``--overwrite``, and only when lsaf wrote it
(see :mod:`lsa_framework.storage.guard`); the check is repeated right before the swap.

The folder holds run.json, report.md and the sparsity plot, plus one subfolder per exporter
(``model/`` from ``safetensors``, ``masks/`` from ``masks``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lsa_framework.report.markdown import render_markdown
from lsa_framework.report.plots import plot_loss_curve, plot_sparsity_profile
from lsa_framework.storage.atomic import staged_folder
from lsa_framework.storage.guard import Protected, check_output, write_marker
from lsa_framework.types import ExportContext

if TYPE_CHECKING:
    from lsa_framework.engine.masks import MaskSet
    from lsa_framework.engine.plugins import ExporterHandle, Plugins
    from lsa_framework.engine.session import Session
    from lsa_framework.result import RunResult

RUN_KIND = "run"
EVAL_KIND = "eval"


def write_folder(
    kind: str, path: Path, overwrite: bool, protected: Sequence[Protected], fill: Callable[[Path], None]
) -> None:
    """``fill(tmp)`` writes the content; the folder appears at ``path`` complete, with its marker."""
    target = check_output(path, kind=kind, overwrite=overwrite, protected=protected)

    def replace(existing: Path) -> None:
        check_output(existing, kind=kind, overwrite=overwrite, protected=protected)  # it may have changed meanwhile

    with staged_folder(target, lambda tmp: write_marker(tmp, kind), replace) as tmp:
        fill(tmp)


def write_report(result: RunResult, folder: Path) -> None:
    """run.json, report.md and (for a pruned model) the sparsity profile."""
    (folder / "run.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (folder / "report.md").write_text(render_markdown(result))
    if result.units:
        plot_sparsity_profile({result.config.scorer: result.units}, folder / "sparsity_profile.png")
    losses = (result.extra.get("recovery") or {}).get("losses")
    if losses:
        plot_loss_curve(losses, folder / "loss_curve.png")


def write_evaluation(result: RunResult, path: Path, overwrite: bool, protected: Sequence[Protected] = ()) -> None:
    """``lsaf eval --output``: run.json (config, model hash, metrics, timings) and report.md."""
    write_folder(EVAL_KIND, path, overwrite, protected, lambda tmp: write_report(result, tmp))


def export_folder(exporter: ExporterHandle) -> str:
    """The subfolder an exporter writes: its declared ``folder``, else its name."""
    return str(getattr(type(exporter.instance), "folder", exporter.name))


def write_run(session: Session, plugins: Plugins, result: RunResult, masks: MaskSet, path: Path) -> None:
    """The run's output folder: the report, then every exporter's subfolder."""
    from lsa_framework.model.loading import protected_paths

    loaded, layout = session.loaded, session.layout
    assert loaded is not None and layout is not None
    context = ExportContext(
        result=result,
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        layout=layout,
        save_model=loaded.save,
        masks=masks,
        base_identity={"model": result.config.model, "source": session.source, "sha256": session.model_sha256},
    )

    def fill(tmp: Path) -> None:
        if plugins.recoverer is not None and session.recovered is not None:
            plugins.recoverer.save_extra(session.recovered, tmp)  # before model/: may unload an adapter
        for exporter in plugins.exporters:
            folder = tmp / export_folder(exporter)
            folder.mkdir()
            exporter.export(context, folder)
        write_report(result, tmp)

    write_folder(RUN_KIND, path, result.config.overwrite, protected_paths(result.config.model), fill)

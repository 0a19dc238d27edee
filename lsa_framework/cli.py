"""The ``lsaf`` command line: thin wrappers that build a RunConfig and call the Python API.

    lsaf run --scorer lse --pruner wanda --sparsity 0.7 --output out/lsa-70
    lsaf eval out/lsa-70/model
    lsaf bench --config grid.yaml --output results/
    lsaf apply out/lsa-70/masks --model smollm2-135m --output rebuilt
    lsaf list pruners --options

The ``run`` and ``eval`` flags are generated from ``RunConfig`` (:mod:`lsa_framework.cli_options`).
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lsa_framework.bench.runner import BenchObserver
from lsa_framework.cli_options import config_parameters, shortcut_parameters, values_from_flags
from lsa_framework.engine.observer import Observer
from lsa_framework.errors import BadInputError, LsafError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune LLMs with layer-wise sparsity allocation.")
console = Console(stderr=True)
out = Console(markup=False)  # tables and paths: a "[...]" in a name is text, not a style


def _fail(exc: LsafError, debug: bool) -> None:
    if debug:
        raise exc
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that temporary folders are removed on the way out."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise Terminated


@contextmanager
def _command(debug: bool, observer: Observer | None = None, resumable: bool = False) -> Iterator[None]:
    """Run a command body: an LsafError becomes its one sentence; Ctrl-C or SIGTERM a short note and
    exit 130 (143), with the progress display stopped and the cursor shown again."""
    try:
        yield
    except LsafError as exc:
        _stop_display(observer)
        _fail(exc, debug)
    except KeyboardInterrupt as exc:
        _stop_display(observer)
        if debug:
            raise
        hint = "; rerun with --resume to continue" if resumable else ""
        console.print(f"interrupted; the previous output, if any, is untouched{hint}", highlight=False)
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    finally:
        _stop_display(observer)


def _stop_display(observer: Observer | None) -> None:
    progress = getattr(observer, "progress", None)
    if progress is not None:
        progress.stop()
    console.show_cursor(True)


class _RichObserver(Observer):
    """One progress bar per pass (the layer as the unit) on stderr, shown once and kept when done."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        )
        self.task: Any = None
        self.quiet = quiet

    def start_pass(self, name: str, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(name, total=total)

    def advance(self) -> None:
        self.progress.advance(self.task)

    def end_pass(self) -> None:
        self.progress.stop()  # the finished bar stays printed; removed, so that the next pass does not print it again
        self.progress.remove_task(self.task)
        self.task = None

    def message(self, text: str) -> None:
        if not self.quiet:
            console.print(f"[dim]{escape(text)}[/]")


class _RichBenchObserver(_RichObserver, BenchObserver):
    """A cells bar with ETA above the per-layer bars."""

    def start_grid(self, total: int, done: int) -> None:
        from rich.progress import TimeRemainingColumn

        self.progress.columns = (*self.progress.columns, TimeRemainingColumn())
        self.progress.start()
        self.cells = self.progress.add_task("cells", total=total, completed=done)

    def start_pass(self, name: str, total: int) -> None:
        self.task = self.progress.add_task(name, total=total)

    def end_pass(self) -> None:
        self.progress.remove_task(self.task)

    def cell_done(self, cell: Any, seconds: float) -> None:
        self.progress.advance(self.cells)
        if not self.quiet:
            console.print(f"[dim]{cell.id} done in {seconds:.0f} s[/]")


def _metric_rows(result: Any) -> list[tuple[str, str, str]]:
    """(metric, dense, pruned) for every evaluator's headline metric, in --eval order."""
    rows = []
    for metric, _ in result.headlines.values():
        if metric in result.metrics:
            dense = result.dense_metrics.get(metric)
            rows.append((metric, "" if dense is None else f"{dense:.4f}", f"{result.metrics[metric]:.4f}"))
    return rows


def _print_result(result: Any) -> None:
    c = result.config
    table = Table(title=f"{c.scorer} + {c.allocator} + {c.pruner} @ {c.target_sparsity:g} ({c.pattern}) on {c.model}")
    table.add_column("metric")
    table.add_column("dense", justify="right")
    table.add_column("pruned", justify="right")
    for row in _metric_rows(result):
        table.add_row(*row)
    for key, value in result.timings.items():
        table.add_row(f"time.{key} (s)", "", f"{value:.1f}")
    table.add_row("peak RSS (MB)", "", f"{max(result.peak_rss_mb.values(), default=0):.0f}")
    out.print(table)
    spars = [u.sparsity for u in result.units]
    if spars:
        out.print(f"allocated sparsity per unit: min {min(spars):.3f}, max {max(spars):.3f} over {len(spars)} units")
    if result.output:
        out.print(f"output written to {result.output}")


def _with_signature(function: Callable[..., Any], parameters: list[inspect.Parameter]) -> Callable[..., Any]:
    """Give a ``**kwargs`` command function the options typer should build."""
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    return function


def _flag(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=annotation)


QUIET = _flag("quiet", Annotated[bool, typer.Option("--quiet", help="No progress bars.")])
DEBUG = _flag("debug", Annotated[bool, typer.Option("--debug", help="Show tracebacks.")])
AS_JSON = _flag("as_json", Annotated[bool, typer.Option("--json", help="Print run.json to stdout instead of a table.")])

RUN_FIELDS = [
    "model", "dtype", "scorer", "allocator", "pruner", "sparsity", "pattern", "calibration", "nsamples", "seqlen",
    "seed", "batch_size", "eval", "eval_dense", "export", "recover", "scorer_opts", "allocator_opts", "pruner_opts",
    "calibration_opts", "eval_opts", "export_opts", "recover_opts", "output", "overwrite", "resume", "threads",
    "device", "pipeline", "offload",
]  # fmt: skip
EVAL_FIELDS = ["dtype", "calibration", "calibration_opts", "seqlen", "eval", "eval_opts", "output", "overwrite",
               "threads", "device"]  # fmt: skip


def _run(**flags: Any) -> None:
    """Score, allocate, prune, evaluate and save a causal LM."""
    observer = _RichObserver(flags["quiet"] or flags["as_json"])
    with _command(flags["debug"], observer, resumable=flags.get("output") is not None):
        from lsa_framework.config import build_config, load_config_file
        from lsa_framework.engine.pipeline import run as run_pipeline

        values = load_config_file(flags["config"]) if flags.get("config") else {}
        values.update(values_from_flags(flags))
        result = run_pipeline(build_config(values), observer)
    if flags["as_json"]:
        out.print_json(json.dumps(result.to_json()))
    else:
        _print_result(result)


CONFIG = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[Path | None, typer.Option(help="YAML/TOML/JSON file of settings; flags override it.")],
)
app.command("run")(
    _with_signature(_run, [CONFIG, *config_parameters(RUN_FIELDS), *shortcut_parameters(), QUIET, AS_JSON, DEBUG])
)


def _eval(**flags: Any) -> None:
    """Evaluate a model as it is, without pruning it."""
    observer = _RichObserver(flags["quiet"] or flags["as_json"])
    with _command(flags["debug"], observer):
        from lsa_framework.config import build_config
        from lsa_framework.engine.pipeline import evaluate_model

        values = {"model": flags["model"], **values_from_flags(flags)}
        result = evaluate_model(build_config(values), observer)
    if flags["as_json"]:
        out.print_json(json.dumps(result.metrics))
        return
    table = Table(title=str(flags["model"]))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in result.headline_values().items():
        table.add_row(metric, f"{value:.4f}")
    out.print(table)


MODEL_ARGUMENT = inspect.Parameter(
    "model",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    annotation=Annotated[
        str, typer.Argument(help="A model folder (ours or any HF model), .gguf file, hub id or alias.")
    ],
)
EVAL_JSON = _flag("as_json", Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")])
app.command("eval")(
    _with_signature(
        _eval, [MODEL_ARGUMENT, *config_parameters(EVAL_FIELDS), *shortcut_parameters(), QUIET, EVAL_JSON, DEBUG]
    )
)


@app.command()
def bench(
    config: Annotated[Path, typer.Option(help="Grid file (YAML/TOML/JSON): axes and shared settings.")],
    output: Annotated[Path, typer.Option(help="Folder for results.json/csv/md and plots; reruns resume it.")] = Path(
        "bench-results"
    ),
    executor: Annotated[str, typer.Option(help="local (in-process) or ray.")] = "local",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over in an --output lsaf bench wrote.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Run a grid of models × scorers × allocators × pruners × sparsities × patterns."""
    observer = _RichBenchObserver(quiet)
    with _command(debug, observer):
        from lsa_framework.bench.grid import load_grid
        from lsa_framework.bench.runner import run_grid

        grid = load_grid(config)
        if executor != "local":
            from lsa_framework.bench.ray_executor import run_grid_ray

            store = run_grid_ray(grid, output, observer, overwrite=overwrite)
        else:
            store = run_grid(grid, output, observer, overwrite=overwrite)
    out.print((output / "results.md").read_text() if (output / "results.md").is_file() else "no results")
    out.print(f"{len(store.records)} cells in {output}")


RECOVER_FIELDS = ["recover_opts", "nsamples", "seqlen", "seed", "batch_size", "eval", "eval_opts", "output",
                  "overwrite", "resume", "threads", "device"]  # fmt: skip


def _recover(**flags: Any) -> None:
    """Fine-tune a pruned output keeping its masks (every pruned weight stays exactly zero)."""
    observer = _RichObserver(flags["quiet"] or flags["as_json"])
    with _command(flags["debug"], observer, resumable=True):
        from lsa_framework.engine.recover import recover_output

        values = values_from_flags(flags)
        values["recover"] = flags["method"]
        for option in ("steps", "lr"):
            if flags.get(option) is not None:
                values.setdefault("recover_opts", {})[option] = flags[option]
        result = recover_output(flags["pruned"], values, observer)
    if flags["as_json"]:
        out.print_json(json.dumps(result.to_json()))
        return
    recovery = result.extra["recovery"]
    table = Table(title=f"{recovery['method']} recovery of {flags['pruned']}")
    table.add_column("metric")
    table.add_column("pruned", justify="right")
    table.add_column("recovered", justify="right")
    for metric, value in result.headline_values().items():
        before = recovery["metrics_before"].get(metric)
        table.add_row(metric, "" if before is None else f"{before:.4f}", f"{value:.4f}")
    out.print(table)
    out.print(f"masks unchanged: {recovery['masks_unchanged']}; output written to {result.output}")


PRUNED_ARGUMENT = inspect.Parameter(
    "pruned",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    annotation=Annotated[Path, typer.Argument(help="The --output folder of an lsaf run (model/ and run.json).")],
)
METHOD = inspect.Parameter(
    "method",
    inspect.Parameter.KEYWORD_ONLY,
    default="lora",
    annotation=Annotated[str, typer.Option(help="The recoverer: lora or masked (or an installed plugin's).")],
)
STEPS = inspect.Parameter(
    "steps", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[int | None, typer.Option(help="Optimizer steps (sets --recover-opt steps).")],
)  # fmt: skip
LR = inspect.Parameter(
    "lr", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[float | None, typer.Option(help="Peak learning rate (sets --recover-opt lr).")],
)  # fmt: skip
app.command("recover")(
    _with_signature(
        _recover,
        [PRUNED_ARGUMENT, METHOD, STEPS, LR, *config_parameters(RECOVER_FIELDS), QUIET, AS_JSON, DEBUG],
    )
)


@app.command()
def apply(
    masks: Annotated[Path, typer.Argument(help="The masks/ folder of an lsaf run made with --export masks.")],
    model: Annotated[str, typer.Option(help="The base model the masks were made for (its hash is checked).")],
    output: Annotated[Path, typer.Option(help="Folder for model/, run.json and report.md.")],
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an --output lsaf wrote.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Rebuild a pruned model from its masks and the base model."""
    with _command(debug):
        from lsa_framework.exporters.masks import apply_masks

        result = apply_masks(masks, model, output, overwrite, dtype)
    out.print(f"sparsity {result.metrics['sparsity']:.4f}; model written to {result.output}")


def _options_table(kind: str, name: str, cls: Any) -> Table:
    table = Table("option", "type", "default", "description", title=f"{kind[:-1]} {name}")
    options = getattr(cls, "Options", None)
    for option, field in options.model_fields.items() if options is not None else []:
        default = field.get_default(call_default_factory=True)
        annotation = str(field.annotation).replace("typing.", "").replace("pathlib.", "")
        table.add_row(option, annotation, repr(default), field.description or "")
    return table


@app.command("list")
def list_plugins(
    kind: Annotated[
        str | None,
        typer.Argument(
            help="scorers, allocators, pruners, evaluators, datasets, architectures, exporters or statistics"
        ),
    ] = None,
    name: Annotated[str | None, typer.Argument(help="One plugin of KIND: show its options.")] = None,
    options: Annotated[bool, typer.Option("--options", help="Show every plugin's options.")] = False,
) -> None:
    """Every registered plugin by kind, with the package it came from (and, asked, its options)."""
    from lsa_framework import registry

    with _command(False):
        if kind is not None and kind not in registry.KINDS:
            raise BadInputError(f"Unknown plugin kind {kind!r}; use one of {', '.join(registry.KINDS)}.")
        if kind is not None and name is not None:
            entry = registry.lookup(kind, name)
            out.print(f"{kind[:-1]} {entry.name} from {entry.distribution} {entry.version}")
            module = inspect.getmodule(entry.cls)
            doc = entry.cls.__doc__ or (module.__doc__ if module is not None else None)
            if doc:
                out.print(inspect.cleandoc(doc).split("\n\n")[0])
            out.print(_options_table(kind, entry.name, entry.cls))
            return
        kinds = list(registry.KINDS) if kind is None else [kind]
        table = Table("kind", "name", "package", "version")
        for k in kinds:
            for entry in registry.collect(k).values():
                table.add_row(k, entry.name, entry.distribution, entry.version)
        out.print(table)
        if options:
            for k in kinds:
                for entry in registry.collect(k).values():
                    if getattr(entry.cls, "Options", None) is not None and entry.cls.Options.model_fields:
                        out.print(_options_table(k, entry.name, entry.cls))


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()

"""The ``lsaf`` command line: thin wrappers that build a RunConfig and call the Python API.

lsaf run --scorer lse --pruner wanda --sparsity 0.7 --output out/lsa-70
lsaf list pruners
"""

from __future__ import annotations

import json
import os
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lsa_framework.bench.runner import BenchObserver
from lsa_framework.engine.pipeline import Observer
from lsa_framework.errors import BadInputError, LsafError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune LLMs with layer-wise sparsity allocation.")
console = Console(stderr=True)
out = Console()


def _fail(exc: LsafError, debug: bool) -> None:
    if debug:
        raise exc
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
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


def _stop_display(observer: Observer | None) -> None:
    progress = getattr(observer, "progress", None)
    if progress is not None:
        progress.stop()
    console.show_cursor(True)


def _collect_cli_values(**flags: Any) -> dict[str, Any]:
    """Flags the user actually gave (None means not given) as RunConfig fields."""
    from lsa_framework.config import parse_key_values

    values = {k: v for k, v in flags.items() if v is not None and not k.endswith("_opt")}
    for kind in ("scorer", "allocator", "pruner", "calibration"):
        items = flags.get(f"{kind}_opt")
        if items:
            values[f"{kind}_opts"] = parse_key_values(items, f"--{kind}-opt")
    if flags.get("eval_opt"):
        eval_opts: dict[str, dict[str, Any]] = {}
        for key, value in parse_key_values(flags["eval_opt"], "--eval-opt").items():
            evaluator, dot, option = key.partition(".")
            if not dot:
                from lsa_framework.errors import BadInputError

                raise BadInputError(f"--eval-opt {key}=... needs the evaluator: write it like perplexity.{key}=...")
            eval_opts.setdefault(evaluator, {})[option] = value
        values["eval_opts"] = eval_opts
    if "eval" in values:
        values["eval"] = [e.strip() for e in values["eval"].split(",") if e.strip()]
    return values


class _RichObserver(Observer):
    """Per-pass progress bars, layer as the unit, on stderr."""

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
        self.progress.stop()

    def message(self, text: str) -> None:
        if not self.quiet:
            console.print(f"[dim]{text}[/]")


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


def _headline(metrics: dict[str, float]) -> dict[str, float]:
    from lsa_framework.report.markdown import headline_metrics

    return headline_metrics(metrics)


def _print_result(result: Any) -> None:
    c = result.config
    table = Table(title=f"{c.scorer} + {c.allocator} + {c.pruner} @ {c.target_sparsity:g} ({c.pattern}) on {c.model}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in _headline(result.metrics).items():
        table.add_row(key, f"{value:.4f}")
    for key, value in result.timings.items():
        table.add_row(f"time.{key} (s)", f"{value:.1f}")
    table.add_row("peak RSS (MB)", f"{max(result.peak_rss_mb.values(), default=0):.0f}")
    out.print(table)
    spars = [u.sparsity for u in result.units]
    if spars:
        out.print(f"allocated sparsity per unit: min {min(spars):.3f}, max {max(spars):.3f} over {len(spars)} units")
    if result.output:
        out.print(f"output written to {result.output}")


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(help="YAML/TOML/JSON file of settings; flags override it.")] = None,
    model: Annotated[str | None, typer.Option(help="smollm2-135m, a model folder, a .gguf file or a hub id.")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    scorer: Annotated[str | None, typer.Option(help="Unit importance scorer (default lse).")] = None,
    allocator: Annotated[str | None, typer.Option(help="layer, block or projection (default layer).")] = None,
    pruner: Annotated[str | None, typer.Option(help="magnitude, wanda or sparsegpt (default wanda).")] = None,
    sparsity: Annotated[float | None, typer.Option(help="Target fraction of pruned weights, in [0, 1).")] = None,
    pattern: Annotated[str | None, typer.Option(help="unstructured, 2:4 or 4:8.")] = None,
    calibration: Annotated[str | None, typer.Option(help="builtin, wikitext2, c4, or a .txt/.jsonl file.")] = None,
    nsamples: Annotated[int | None, typer.Option(help="Calibration sequences (default 128).")] = None,
    seqlen: Annotated[int | None, typer.Option(help="Tokens per calibration sequence (default 2048).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the calibration sampling.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Calibration sequences per forward.")] = None,
    eval: Annotated[str | None, typer.Option(help="Comma-separated evaluators, e.g. perplexity,sparsity.")] = None,
    scorer_opt: Annotated[list[str] | None, typer.Option(help="Scorer option KEY=VALUE (repeatable).")] = None,
    allocator_opt: Annotated[list[str] | None, typer.Option(help="Allocator option KEY=VALUE.")] = None,
    pruner_opt: Annotated[list[str] | None, typer.Option(help="Pruner option KEY=VALUE.")] = None,
    calibration_opt: Annotated[list[str] | None, typer.Option(help="Dataset option KEY=VALUE.")] = None,
    eval_opt: Annotated[list[str] | None, typer.Option(help="Evaluator option NAME.KEY=VALUE.")] = None,
    output: Annotated[Path | None, typer.Option(help="Folder for model/, run.json, report.md, plots.")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace an existing --output.")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Continue an interrupted run into --output.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: all cores).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or auto (layer by layer).")] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(help="sequential (the papers) or basic (prune from the dense model's statistics: one pass)."),
    ] = None,
    offload: Annotated[
        str | None, typer.Option(help="disk: decoder layers stay in the safetensors files (models > memory).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print run.json to stdout instead of a table.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Score, allocate, prune, evaluate and save a causal LM."""
    observer = _RichObserver(quiet or as_json)
    with _command(debug, observer, resumable=output is not None):
        from lsa_framework.config import build_config, load_config_file
        from lsa_framework.engine.pipeline import run as run_pipeline

        values = load_config_file(config) if config else {}
        values.update(
            _collect_cli_values(
                model=model,
                dtype=dtype,
                scorer=scorer,
                allocator=allocator,
                pruner=pruner,
                sparsity=sparsity,
                pattern=pattern,
                calibration=calibration,
                nsamples=nsamples,
                seqlen=seqlen,
                seed=seed,
                batch_size=batch_size,
                eval=eval,
                scorer_opt=scorer_opt,
                allocator_opt=allocator_opt,
                pruner_opt=pruner_opt,
                calibration_opt=calibration_opt,
                eval_opt=eval_opt,
                output=output,
                overwrite=overwrite,
                resume=resume,
                threads=threads,
                device=device,
                pipeline=pipeline,
                offload=offload,
            )
        )
        run_config = build_config(values)
        result = run_pipeline(run_config, observer)
    if as_json:
        out.print_json(json.dumps(result.to_json()))
    else:
        _print_result(result)


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Argument(help="A model folder (ours or any HF model), .gguf file, hub id or alias.")],
    eval: Annotated[str, typer.Option(help="Comma-separated evaluators.")] = "perplexity,sparsity",
    tasks: Annotated[str | None, typer.Option(help="Zero-shot tasks, comma-separated (or 'paper').")] = None,
    calibration: Annotated[str, typer.Option(help="Text source whose evaluation split is used.")] = "builtin",
    seqlen: Annotated[int | None, typer.Option(help="Perplexity window length (default 2048 or the context).")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    eval_opt: Annotated[list[str] | None, typer.Option(help="Evaluator option NAME.KEY=VALUE.")] = None,
    output: Annotated[Path | None, typer.Option(help="Folder for run.json and report.md.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an --output lsaf wrote.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Evaluate a model as it is, without pruning it."""
    observer = _RichObserver(as_json)
    with _command(debug, observer):
        from lsa_framework.config import build_config
        from lsa_framework.engine.pipeline import evaluate_model

        values = _collect_cli_values(
            model=model,
            eval=eval,
            calibration=calibration,
            seqlen=seqlen,
            dtype=dtype,
            eval_opt=eval_opt,
            output=output,
            overwrite=overwrite or None,
        )
        if tasks:
            values.setdefault("eval_opts", {}).setdefault("zeroshot", {})["tasks"] = tasks.split(",")
        result = evaluate_model(build_config({**values, "scorer": "uniform"}), observer)
    if as_json:
        out.print_json(json.dumps(result.metrics))
        return
    table = Table(title=f"{model}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in _headline(result.metrics).items():
        table.add_row(key, f"{value:.4f}")
    out.print(table)


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


@app.command("list")
def list_plugins(
    kind: Annotated[
        str | None, typer.Argument(help="scorers, allocators, pruners, evaluators, datasets, architectures")
    ] = None,
) -> None:
    """Every registered plugin by kind, with the package it came from."""
    from lsa_framework import registry

    kinds = list(registry.KINDS) if kind is None else [kind]
    if kind is not None and kind not in registry.KINDS:
        _fail(BadInputError(f"Unknown plugin kind {kind!r}; use one of {', '.join(registry.KINDS)}."), False)
    table = Table("kind", "name", "package", "version")
    for k in kinds:
        for entry in registry.collect(k).values():
            table.add_row(k, entry.name, entry.distribution, entry.version)
    out.print(table)


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()

"""Zero-shot multiple-choice accuracy through lm-eval (0.4.x), on the model in memory.

    lsaf run --eval zeroshot                                    # offline: tasks built from the evaluation text
    lsaf run --eval zeroshot --eval-opt zeroshot.tasks=paper    # the LSA paper's seven tasks (needs network)
    lsaf run --eval zeroshot --eval-opt zeroshot.tasks=my_task --eval-opt zeroshot.include_path=./my_tasks

The pruned model is wrapped as it is (``HFLM(pretrained=<model>)``, no save-and-reload) and scored
0-shot by log-likelihood: for each example, the choice with the highest summed log-probability
(``acc``) or highest log-probability per character (``acc_norm``) is the prediction.

By default the tasks are the offline ones of :mod:`lsa_framework.data.tasks` (next sentence and last
word, four choices each, chance 25%), generated once from ``context.dataset.documents("evaluation")``,
so with ``--calibration builtin`` from the Austen evaluation books. ``tasks=paper`` names the seven
tasks of the LSA paper (as in Wanda and OWL): their data comes from the Hugging Face hub, so they
need network access (or a filled datasets cache). ``include_path`` adds folders of your own lm-eval
task YAML files (e.g. ``dataset_path: json`` over local JSONL).

Metrics: ``zeroshot.<task>.acc`` and ``zeroshot.<task>.acc_norm`` where lm-eval reports them, and
``zeroshot.mean``, the unweighted mean of ``acc`` over the tasks asked for (a group counts once, with
its aggregated acc), which is how the LSA, OWL and Wanda papers average their zero-shot tables.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from lsa_framework.data.tasks import OFFLINE_TASKS, offline_task_dir
from lsa_framework.errors import BadInputError
from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import EvalContext, PluginOptions

#: The seven zero-shot tasks of the LSA paper (and of Wanda and OWL), by their lm-eval names.
PAPER_TASKS: tuple[str, ...] = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
#: Names that stand for several tasks.
ALIASES: dict[str, tuple[str, ...]] = {"paper": PAPER_TASKS, "offline": OFFLINE_TASKS}
METRICS = ("acc", "acc_norm")

_QUIET_LOGGERS = ("lm_eval", "datasets", "fsspec", "filelock")


def _as_list(value: Any) -> Any:
    """``"a,b"`` (as a command-line option gives it), a single path, or a list."""
    if isinstance(value, (str, Path)):
        value = str(value).split(",")
    if isinstance(value, (list, tuple)):
        return [str(part).strip() for part in value if str(part).strip()]
    return value


class ZeroShotOptions(PluginOptions):
    tasks: list[str] = Field(
        default_factory=lambda: list(OFFLINE_TASKS),
        description=(
            f"lm-eval task names; default: the offline tasks {', '.join(OFFLINE_TASKS)} (alias 'offline'); "
            "'paper' = the LSA paper's seven (needs network)."
        ),
    )
    include_path: list[Path] = Field(
        default_factory=list, description="Folders with your own lm-eval task YAML files (+ their data)."
    )
    limit: int | None = Field(default=None, gt=0, description="Evaluate the first N examples of each task only.")
    batch_size: int = Field(default=8, gt=0)
    task_examples: int = Field(default=500, gt=0, description="Examples generated per offline task.")
    task_seed: int = Field(default=0, description="Seed of the offline task generation.")
    verbose: bool = Field(default=False, description="Show lm-eval's logs and progress bars.")

    @field_validator("tasks", "include_path", mode="before")
    @classmethod
    def _split_text(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("tasks")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one task")
        return value


def expand_tasks(names: list[str]) -> list[str]:
    """Replace the aliases (``paper``, ``offline``) by their tasks; drop repeats, keep the order."""
    out: list[str] = []
    for name in names:
        out.extend(ALIASES.get(name, (name,)))
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Silence lm-eval's and datasets' logs and progress bars (stderr) while inside."""
    if not enabled:
        yield
        return
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    bars = not are_progress_bars_disabled()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    disable_progress_bars()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # tqdm bars of lm-eval
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars:
            enable_progress_bars()


def _task_manager(include_path: list[Path], defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in include_path] or None, include_defaults=defaults)


def _unknown_task_error(name: str, known: list[str]) -> BadInputError:
    ours = [*OFFLINE_TASKS, *PAPER_TASKS, *ALIASES]
    close = difflib.get_close_matches(name, ours, n=1) or difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return BadInputError(
        f"lm-eval knows no zero-shot task {name!r}; {hint}the offline tasks are {', '.join(OFFLINE_TASKS)}, "
        f"the paper's seven ({', '.join(PAPER_TASKS)}, alias 'paper') need network access, and your own "
        "lm-eval task folders go in --eval-opt zeroshot.include_path=DIR."
    )


class ZeroShotEvaluator:
    name: ClassVar[str] = "zeroshot"
    Options: ClassVar[type[PluginOptions]] = ZeroShotOptions
    headline: ClassVar[str] = "zeroshot.mean"
    lower_is_better: ClassVar[bool | None] = False
    shortcuts: ClassVar[dict[str, str]] = {"tasks": "tasks"}  # `lsaf eval MODEL --tasks paper`
    summary: ClassVar[tuple[str, ...]] = ("zeroshot.mean", "zeroshot.*.acc", "zeroshot.*.acc_norm")

    def __init__(self, options: ZeroShotOptions | None = None) -> None:
        self.options = options or ZeroShotOptions()
        self.tasks = expand_tasks(self.options.tasks)
        for path in self.options.include_path:
            if not path.is_dir():
                raise BadInputError(
                    f"The zero-shot include_path {str(path)!r} is not a folder; "
                    "pass a folder of lm-eval task YAML files."
                )
        self._check_names()  # before any model is loaded, not after pruning

    def _needs_defaults(self) -> bool:
        """Whether a task is neither offline nor in the user's folders, so lm-eval's own index is needed."""
        others = [n for n in self.tasks if n not in OFFLINE_TASKS]
        if not others:
            return False
        if self.options.include_path:
            with quiet(not self.options.verbose):
                known = set(_task_manager(self.options.include_path, defaults=False).all_tasks)
            others = [n for n in others if n not in known]
        return bool(others)

    def _check_names(self) -> None:
        unknown = [n for n in self.tasks if n not in OFFLINE_TASKS and n not in PAPER_TASKS]
        if not unknown:
            return
        include = self.options.include_path
        with quiet(not self.options.verbose):
            known = set(_task_manager(include, defaults=False).all_tasks) if include else set()
            unknown = [n for n in unknown if n not in known]
            if unknown:  # building lm-eval's whole index takes a few seconds
                known = set(_task_manager(include, defaults=True).all_tasks)
                unknown = [n for n in unknown if n not in known]
        if unknown:
            raise _unknown_task_error(unknown[0], sorted(known))

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, float]:
        include = list(self.options.include_path)
        if any(n in OFFLINE_TASKS for n in self.tasks):
            documents = context.dataset.documents("evaluation")
            include.insert(0, offline_task_dir(documents, self.options.task_examples, self.options.task_seed))
        defaults = self._needs_defaults()
        with quiet(not self.options.verbose):
            manager = _task_manager(include, defaults)
            results = run_tasks(model, tokenizer, self.tasks, manager, self.options.limit, self.options.batch_size)
        return results


def _load(manager: Any, name: str) -> tuple[list[Any], list[str]]:
    """The task or group objects to run for ``name``, and the names whose acc enters the mean."""
    if name not in manager.all_tasks:
        raise _unknown_task_error(name, manager.all_tasks)
    try:
        loaded = manager.load([name])
    except OSError as exc:  # datasets raise ConnectionError (an OSError) when the hub is out of reach
        need = "needs network access to the Hugging Face hub once" if name in PAPER_TASKS else "cannot load its data"
        raise BadInputError(
            f"The zero-shot task {name!r} {need} ({type(exc).__name__}: {str(exc).splitlines()[0]}); run it "
            f"online once, or use the offline tasks ({', '.join(OFFLINE_TASKS)})."
        ) from exc
    if name in loaded["groups"]:
        return [loaded["groups"][name]], [name]
    tasks = loaded["tasks"]  # a task, or every task of a tag
    return list(tasks.values()), list(tasks)


def run_tasks(model: Any, tokenizer: Any, names: list[str], manager: Any, limit: int | None, batch_size: int) -> dict:
    """Run lm-eval 0-shot on the in-memory ``model``; metrics as in the module docstring."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    objects: list[Any] = []
    headline: list[str] = []
    for name in names:
        loaded, heads = _load(manager, name)
        objects.extend(loaded)
        headline.extend(heads)
    # A copy: lm-eval may set a pad token on the tokenizer it gets.
    lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), backend="causal", batch_size=batch_size)
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=objects,
        task_manager=manager,
        num_fewshot=0,
        limit=limit,
        log_samples=False,
        bootstrap_iters=0,
        random_seed=None,  # leave the caller's random generators alone
        numpy_random_seed=None,
        torch_random_seed=None,
    )
    if output is None:  # only on non-zero ranks of a distributed run
        return {}
    metrics: dict[str, float] = {}
    for task, values in output["results"].items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if metric in METRICS and filter_name == "none" and isinstance(value, (int, float)):
                metrics[f"zeroshot.{task}.{metric}"] = float(value)
    accuracies = [metrics[f"zeroshot.{n}.acc"] for n in headline if f"zeroshot.{n}.acc" in metrics]
    if accuracies:
        metrics["zeroshot.mean"] = sum(accuracies) / len(accuracies)
    return metrics


@hookimpl
def lsaf_register_evaluators(register: Any) -> None:
    register(ZeroShotEvaluator)

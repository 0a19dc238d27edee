"""``lsaf recover``: fine-tune a pruned output, keeping its masks, into a new output folder.

    lsaf recover out/wanda-70 --method lora --recover-opt steps=200 --output out/wanda-70-lora [--resume]

The pruned output's run.json says how it was made; its model/ is loaded, its calibration split drawn
again (the same windows unless ``--nsamples``/``--seqlen``/``--seed`` say otherwise, never the
evaluation text), the evaluators run before and after, and the recoverer trains in between. The masks
are the zeros of the pruned linears, checked against the ``masks/`` export when the run has one (else
against run.json's mask hashes). ``--output`` receives ``model/`` (from_pretrained), ``run.json``,
``report.md`` and ``loss_curve.png`` (and ``adapter/`` for an unmerged LoRA).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lsa_framework.config import build_config
from lsa_framework.engine.checkpoint import PARTIAL_MARKER, is_own_partial, partial_dir
from lsa_framework.engine.observer import Observer, stage
from lsa_framework.engine.pipeline import claimed_output
from lsa_framework.engine.plugins import resolve, resolve_dataset, resolve_evaluators
from lsa_framework.engine.session import Session
from lsa_framework.errors import BadInputError
from lsa_framework.result import RunResult
from lsa_framework.storage.atomic import make_folder

RECOVER_KIND = "recover"
#: Settings of the pruned run that recovery does not take over.
NOT_INHERITED = frozenset(
    {"output", "overwrite", "resume", "offload", "export", "export_opts", "recover", "recover_opts"}
)


def _pruned_run(source: Path) -> dict[str, Any]:
    run_json = source / "run.json"
    if not (source / "model").is_dir() or not run_json.is_file():
        raise BadInputError(
            f"{source} is not an lsaf run output (it needs model/ and run.json); pass the --output folder of lsaf run."
        )
    try:
        data = json.loads(run_json.read_text(encoding="utf-8"))
        return dict(data["config"]) | {"_mask_sha256": data.get("mask_sha256", {})}
    except (ValueError, KeyError, TypeError):
        raise BadInputError(f"{run_json} is not readable; pass the --output folder of an lsaf run.") from None


def _expected_masks(source: Path, recorded: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Where the masks to keep come from, and their hashes."""
    from lsa_framework.engine.masks import mask_hash
    from lsa_framework.exporters.masks import MASKS_FILE, read_masks

    if (source / "masks" / MASKS_FILE).is_file():
        _, masks = read_masks(source / "masks")
        return "masks export", {name: mask_hash(mask) for name, mask in masks.items()}
    return "run.json", dict(recorded)


def recover_output(source: Path, values: dict[str, Any], observer: Observer | None = None) -> RunResult:
    """Recover the pruned output ``source`` with ``values`` (``recover``, ``output``, ... overrides)."""
    from lsa_framework.recovery.masks import mask_hashes, masks_from_zeros
    from lsa_framework.report.output import write_folder, write_report

    observer = observer or Observer()
    source = Path(source).expanduser()
    pruned = _pruned_run(source)
    recorded = pruned.pop("_mask_sha256")
    inherited = {k: v for k, v in pruned.items() if k not in NOT_INHERITED}
    if "eval" in values and "eval_opts" not in values:  # another --eval: keep only its evaluators' options
        evals = values["eval"] if isinstance(values["eval"], list) else str(values["eval"]).split(",")
        inherited["eval_opts"] = {k: v for k, v in inherited.get("eval_opts", {}).items() if k in evals}
    config = build_config({**inherited, "eval_dense": False, **values, "model": str(source / "model")})
    if not config.recover:
        raise BadInputError("lsaf recover needs a method: pass --method lora or --method masked.")
    if config.output is None:
        raise BadInputError("lsaf recover needs --output: the recovered model is written to a new folder.")
    recoverer = resolve("recoverers", config.recover, config.recover_opts)
    dataset = resolve_dataset(config)
    evaluators = resolve_evaluators(config)
    with claimed_output(config, RECOVER_KIND) as target:
        assert target is not None
        result = RunResult(config=config, kind=RECOVER_KIND)
        result.headlines = {e.name: e.headline for e in evaluators}
        result.summary = [p for e in evaluators for p in e.summary]
        session = Session(config, dataset, observer)
        session.load(result)
        session.calibrate(result)
        session.describe(result)
        assert session.layout is not None
        names = [info.name for info in session.layout.all_linears()]
        origin, expected = _expected_masks(source, recorded)
        found = mask_hashes(masks_from_zeros(session.model, names))
        differing = sorted(n for n in expected if found.get(n) != expected[n])
        with stage(result, "evaluation before recovery"):
            before = session.evaluate(evaluators)
        state = partial_dir(target)
        if not state.exists():
            make_folder(state)
            (state / PARTIAL_MARKER).touch()  # lsaf's own: removed once the output is written
        with stage(result, "recovery"):
            recovered = session.recover(recoverer, result, state / "recovery", config.resume)
        with stage(result, "evaluation"):
            result.metrics = session.evaluate(evaluators)
        result.dense_metrics = {}
        result.extra["recovery"] |= {
            "source": str(source),
            "metrics_before": before,
            "masks_checked_against": origin,
            "masks_differing_from_source": differing,  # pre-existing zeros the pruner did not count, if any
        }
        result.mask_hashes = dict(recovered.mask_sha256)
        loaded = session.loaded
        assert loaded is not None

        def fill(tmp: Path) -> None:
            recoverer.save_extra(recovered, tmp)
            (tmp / "model").mkdir()
            loaded.save(tmp / "model")
            loaded.tokenizer.save_pretrained(tmp / "model")
            write_report(result, tmp)

        with stage(result, "save"):
            write_folder(RECOVER_KIND, target, config.overwrite, [], fill)
        result.output = target
        if is_own_partial(state):
            shutil.rmtree(state, ignore_errors=True)  # the recovery's checkpoints, now written out
    return result

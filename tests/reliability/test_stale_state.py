"""State that outlives a run — resume states, bench cells and scores — is used only when it still applies.

A changed model, changed settings or damaged files are refused (or re-run) with one sentence, never
silently mixed into a result."""

from __future__ import annotations

import errno
import json
import types
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from lsa_framework import hookimpl, registry
from lsa_framework.bench.grid import GridConfig
from lsa_framework.bench.runner import BenchObserver, run_grid
from lsa_framework.engine.checkpoint import partial_dir
from tests.fakes import cli, one_sentence, quick_run_args

runner = CliRunner()


class _StopAfterLayer:
    """A plugin that interrupts a run right after decoder layer ``index`` is pruned (as a kill would)."""

    def __init__(self, index: int) -> None:
        self.module = types.ModuleType("stopper")

        def lsaf_after_layer_pruned(layer_index, masks, report):
            if layer_index == index:
                raise KeyboardInterrupt

        self.module.lsaf_after_layer_pruned = hookimpl(lsaf_after_layer_pruned)  # type: ignore[attr-defined]

    def __enter__(self):
        registry.plugin_manager().register(self.module, name="stopper")
        return self

    def __exit__(self, *exc):
        registry.plugin_manager().unregister(name="stopper")


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for f in folder.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


def _interrupted(model: Path, text_file: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    args = [*quick_run_args(model, text_file, out), "--pruner", "wanda", *extra]
    with _StopAfterLayer(1):
        result = cli(*args)
    assert result.exit_code == 130 and "--resume" in one_sentence(result.output)
    # layer 1 was interrupted before its save: layer 0 is the state to resume from
    assert json.loads((partial_dir(out) / "state.json").read_text())["layers_done"] == 1
    return args


def test_resume_against_other_weights_is_refused(tiny_model_dir, tiny_text_file, tmp_path):
    model = _copy(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "out"
    args = _interrupted(model, tiny_text_file, out)
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v * 1.01 for k, v in weights.items()}, str(model / "model.safetensors"), metadata={"format": "pt"})
    result = cli(*args, "--resume")
    assert result.exit_code == 2 and "content hash differs" in one_sentence(result.output)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["deleted layer", "truncated layer", "corrupt state"])
def test_damaged_resume_state_is_one_sentence(damage, tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    args = _interrupted(tiny_model_dir, tiny_text_file, out)
    state = partial_dir(out)
    if damage == "deleted layer":
        (state / "layer_0.safetensors").unlink()
    elif damage == "truncated layer":
        data = (state / "layer_0.safetensors").read_bytes()
        (state / "layer_0.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (state / "state.json").write_text('{"layers_done": 1, "finger')
    # a corrupt state.json is reported even when not resuming; a damaged layer file when resuming
    for extra in (["--resume"], []) if damage == "corrupt state" else (["--resume"],):
        result = cli(*args, *extra)
        assert result.exit_code == 2, result.output
        assert "is damaged" in one_sentence(result.output) and "delete that folder" in one_sentence(result.output)


def test_disk_full_while_saving_a_layer_keeps_the_state_resumable(
    tiny_model_dir, tiny_text_file, tmp_path, monkeypatch
):
    from lsa_framework.model import tensorfile

    real = tensorfile.write_tensors
    calls = {"n": 0}

    def fill_disk_on_the_third(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, tensors, metadata)

    monkeypatch.setattr(tensorfile, "write_tensors", fill_disk_on_the_third)
    out = tmp_path / "out"
    args = [*quick_run_args(tiny_model_dir, tiny_text_file, out), "--pruner", "wanda"]
    result = cli(*args)
    assert (
        result.exit_code == 1
        and "disk is full" in one_sentence(result.output)
        and "--resume" in one_sentence(result.output)
    )
    assert json.loads((partial_dir(out) / "state.json").read_text())["layers_done"] == 2
    monkeypatch.setattr(tensorfile, "write_tensors", real)
    resumed = cli(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output


def test_disk_full_while_writing_the_output_leaves_the_previous_one(
    tiny_model_dir, tiny_text_file, tmp_path, monkeypatch
):
    from lsa_framework.report import output

    out = tmp_path / "out"
    args = quick_run_args(tiny_model_dir, tiny_text_file, out)
    assert cli(*args).exit_code == 0
    before = (out / "run.json").read_bytes()

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "render_markdown", full)
    result = cli(*args, "--overwrite")
    assert result.exit_code == 1 and "disk is full" in one_sentence(result.output)
    assert (out / "run.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".lsaf-tmp-" in p.name or ".lsaf-old-" in p.name]


def test_seqlen_beyond_the_context_is_refused_and_the_default_is_fitted(tiny_model_dir, tiny_text_file, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lsa_framework.config import build_config
    from lsa_framework.engine.pipeline import run
    from tests.conftest import WORDS, make_tokenizer

    asked = cli(*quick_run_args(tiny_model_dir, tiny_text_file, tmp_path / "a"), "--seqlen", "100000")
    assert asked.exit_code == 2 and "longer than the model's context of 256 tokens" in one_sentence(asked.output)
    evaluated = cli("eval", str(tiny_model_dir), "--calibration", str(tiny_text_file), "--seqlen", "100000")
    assert evaluated.exit_code == 2 and "context of 256 tokens" in one_sentence(evaluated.output)

    short = tmp_path / "short-context"
    LlamaForCausalLM(
        LlamaConfig(vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=48)
    ).save_pretrained(short)  # fmt: skip
    make_tokenizer().save_pretrained(short)
    config = build_config({"model": str(short), "calibration": str(tiny_text_file), "nsamples": 4, "scorer": "uniform",
                           "eval": ["perplexity"], "output": tmp_path / "fitted"})  # fmt: skip
    result = run(config)
    assert result.calibration == {"nsamples": 4, "seqlen": 48}  # the default 2048, fitted to the context
    assert json.loads((tmp_path / "fitted" / "run.json").read_text())["calibration"]["seqlen"] == 48


def test_perplexity_batches_are_bounded_by_their_logits():
    from lsa_framework.errors import BadInputError
    from lsa_framework.evaluators.perplexity import windows_per_batch

    assert windows_per_batch(512, 49152, 4) == 4  # the default model: 0.8 GB of logits for 4 windows
    assert windows_per_batch(8192, 49152, 4) == 1
    with pytest.raises(BadInputError, match="GiB for its logits"):
        windows_per_batch(100_000, 262_144, 4)


# --- bench ---------------------------------------------------------------------------------------------


class Passes(BenchObserver):
    def __init__(self) -> None:
        self.passes: list[str] = []

    def start_pass(self, name: str, total: int) -> None:
        self.passes.append(name)


def _grid(model: Path, text_file: Path, **run: object) -> GridConfig:
    settings = {"calibration": str(text_file), "nsamples": 4, "seqlen": 32, "eval": ["sparsity"], **run}
    return GridConfig(models=[str(model)], scorers=["lse"], allocators=["layer"], sparsities=[0.5], run=settings)


@pytest.mark.parametrize("change", [{"nsamples": 8}, {"seqlen": 48}, {"seed": 7}])
def test_bench_reruns_cells_and_scores_whose_settings_changed(change, tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "bench"
    first = run_grid(_grid(tiny_model_dir, tiny_text_file), out, Passes())
    observer = Passes()
    second = run_grid(_grid(tiny_model_dir, tiny_text_file, **change), out, observer)
    assert observer.passes.count("scoring") == 1  # the old scores do not apply: scored again
    assert len(second.records) == 2  # the old cell is kept, under its own identity
    (old,) = first.records.values()
    (new,) = (r for key, r in second.records.items() if key != old["key"])
    assert new["units"] != old["units"]  # other calibration, other LSE scores
    table = (out / "results.md").read_text()
    assert table.count("| wanda + lse (layer) |") == 1  # only the current grid's cell is shown


def test_bench_reruns_cells_whose_model_weights_changed(tiny_model_dir, tiny_text_file, tmp_path):
    model = _copy(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "bench"
    run_grid(_grid(model, tiny_text_file), out, Passes())
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v * 0.9 for k, v in weights.items()}, str(model / "model.safetensors"), metadata={"format": "pt"})
    observer = Passes()
    assert len(run_grid(_grid(model, tiny_text_file), out, observer).records) == 2
    assert observer.passes.count("scoring") == 1


def test_a_failing_cell_is_recorded_and_the_others_finish(tiny_model_dir, tiny_text_file, tmp_path):
    class FailingPruner:
        name = "failing"
        Options = registry.collect("pruners")["magnitude"].cls.Options
        needs = frozenset()

        def __init__(self, options=None):
            pass

        def prune(self, linear, stats, sparsity, pattern):
            raise RuntimeError("cannot prune")

    plugin = types.ModuleType("failing_plugin")
    plugin.lsaf_register_pruners = hookimpl(lambda register: register(FailingPruner))  # type: ignore[attr-defined]
    registry.plugin_manager().register(plugin, name="failing_plugin")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"models: [{tiny_model_dir}]\nscorers: [uniform]\npruners: [failing, magnitude]\nsparsities: [0.5]\n"
        f"run: {{calibration: {tiny_text_file}, nsamples: 4, seqlen: 32, eval: [sparsity]}}\n"
    )
    try:
        result = cli("bench", "--config", str(grid), "--output", str(tmp_path / "bench"), "--quiet")
    finally:
        registry.plugin_manager().unregister(name="failing_plugin")
    assert result.exit_code == 1
    assert "1 of 2 cells failed" in one_sentence(result.output) and "cannot prune" in one_sentence(result.output)
    cells = json.loads((tmp_path / "bench" / "results.json").read_text())["cells"]
    assert [c["pruner"] for c in cells] == ["magnitude"]
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "failed cells" in table and "cannot prune" in table


@pytest.mark.parametrize(("content", "needle"), [("", "is empty"), ("sparsities: []\n", "no cells")])
def test_empty_grids_are_errors(content, needle, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(content)
    result = cli("bench", "--config", str(grid), "--output", str(tmp_path / "bench"), "--quiet")
    assert result.exit_code == 2 and needle in one_sentence(result.output)
    assert not (tmp_path / "bench").exists()


def test_bench_overwrite_starts_over(tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "bench"
    run_grid(_grid(tiny_model_dir, tiny_text_file), out, Passes())
    observer = Passes()
    store = run_grid(_grid(tiny_model_dir, tiny_text_file), out, observer, overwrite=True)
    assert observer.passes.count("scoring") == 1 and len(store.records) == 1

"""Data safety: lsaf never deletes or overwrites what it did not write, and refuses bad paths before any work.

Every refusal exits 2 with one sentence, and the folders involved are byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lsa_framework.storage.guard import MARKER, write_marker
from tests.fakes import cli, one_sentence, quick_run_args

runner = CliRunner()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def users_folder(tmp_path: Path) -> Path:
    """A folder with a user's things in it: what --overwrite must never touch."""
    home = tmp_path / "somewhere"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret key")
    (home / "projects").mkdir()
    (home / "projects" / "thesis.tex").write_text("\\chapter{Results}")
    (home / ".bashrc").write_text("export PATH=$PATH")
    return home


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model with a notes file, so that a test may aim --output at it."""
    folder = tmp_path / "my-model"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "notes.txt").write_text("my notes")
    return folder


def test_overwrite_refuses_a_folder_lsaf_did_not_write(users_folder, tiny_model_dir, tiny_text_file):
    before = snapshot(users_folder)
    result = cli(*quick_run_args(tiny_model_dir, tiny_text_file, users_folder), "--overwrite")
    assert result.exit_code == 2
    assert "did not write" in one_sentence(result.output)
    assert snapshot(users_folder) == before


@pytest.mark.parametrize("spelling", [".", ""])
def test_overwrite_refuses_the_current_directory(spelling, users_folder, tiny_model_dir, tiny_text_file, monkeypatch):
    monkeypatch.chdir(users_folder)
    before = snapshot(users_folder)
    result = cli(*quick_run_args(tiny_model_dir, tiny_text_file, Path(spelling)), "--overwrite")
    assert result.exit_code == 2
    assert "current directory" in one_sentence(result.output)
    assert snapshot(users_folder) == before


def test_overwrite_refuses_a_parent_of_the_current_directory(users_folder, tiny_model_dir, tiny_text_file, monkeypatch):
    write_marker(users_folder, "run")  # even a folder that looks like lsaf's
    monkeypatch.chdir(users_folder / "projects")
    before = snapshot(users_folder)
    result = cli(*quick_run_args(tiny_model_dir, tiny_text_file, Path("..")), "--overwrite")
    assert result.exit_code == 2
    assert "contains the current directory" in one_sentence(result.output)
    assert snapshot(users_folder) == before


def test_overwrite_refuses_the_home_directory(users_folder, tiny_model_dir, tiny_text_file, monkeypatch):
    monkeypatch.setenv("HOME", str(users_folder))
    before = snapshot(users_folder)
    result = cli(*quick_run_args(tiny_model_dir, tiny_text_file, Path("~")), "--overwrite")
    assert result.exit_code == 2
    assert "home directory" in one_sentence(result.output)
    assert snapshot(users_folder) == before


def test_overwrite_refuses_the_model_being_pruned(model_copy, tiny_text_file):
    before = snapshot(model_copy)
    result = cli(*quick_run_args(model_copy, tiny_text_file, model_copy), "--overwrite")
    assert result.exit_code == 2
    assert "the model being read" in one_sentence(result.output)
    assert snapshot(model_copy) == before
    inside = cli(*quick_run_args(model_copy, tiny_text_file, model_copy / "pruned"), "--overwrite")
    assert inside.exit_code == 2 and "is inside the model" in one_sentence(inside.output)
    assert snapshot(model_copy) == before


def test_overwrite_refuses_an_lsaf_output_that_holds_the_model(tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    assert cli(*quick_run_args(tiny_model_dir, tiny_text_file, out)).exit_code == 0
    before = snapshot(out)
    result = cli(*quick_run_args(out / "model", tiny_text_file, out), "--overwrite")
    assert result.exit_code == 2 and "contains the model being read" in one_sentence(result.output)
    assert snapshot(out) == before


def test_overwrite_refuses_the_cache(tiny_model_dir, tiny_text_file, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cached_model = cache / "models" / "smollm2-135m"
    cached_model.mkdir(parents=True)
    (cached_model / "config.json").write_text("{}")
    write_marker(cached_model, "run")
    monkeypatch.setenv("LSAF_CACHE", str(cache))
    before = snapshot(cache)
    result = cli(*quick_run_args(tiny_model_dir, tiny_text_file, cached_model), "--overwrite")
    assert result.exit_code == 2 and "lsaf's cache" in one_sentence(result.output)
    assert snapshot(cache) == before


def test_overwrite_replaces_only_a_clean_lsaf_output(tiny_model_dir, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    args = quick_run_args(tiny_model_dir, tiny_text_file, out)
    assert cli(*args).exit_code == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "run" and "model" in marker["entries"] and "run.json" in marker["entries"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # the user's umask, not mkdtemp's 0700

    again = cli(*args)
    assert again.exit_code == 2 and "--overwrite" in one_sentence(again.output)
    assert cli(*args, "--overwrite").exit_code == 0  # lsaf's own, clean: replaced

    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    refused = cli(*args, "--overwrite")
    assert refused.exit_code == 2 and "'notes.txt'" in one_sentence(refused.output)
    assert snapshot(out) == before


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_eval_and_bench_outputs_follow_the_same_rule(users_folder, tiny_model_dir, tiny_text_file, tmp_path):
    before = snapshot(users_folder)
    evaluated = cli("eval", str(tiny_model_dir), "--calibration", str(tiny_text_file), "--seqlen", "32",
                    "--eval", "sparsity", "--output", str(users_folder), "--overwrite")  # fmt: skip
    assert evaluated.exit_code == 2 and "did not write" in one_sentence(evaluated.output)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"models: [{tiny_model_dir}]\nscorers: [uniform]\nrun: {{calibration: {tiny_text_file}, nsamples: 4, "
        "seqlen: 32, eval: [sparsity]}\n"
    )
    for extra in ([], ["--overwrite"]):
        benched = cli("bench", "--config", str(grid), "--output", str(users_folder), "--quiet", *extra)
        assert benched.exit_code == 2 and "did not write" in one_sentence(benched.output)
    assert snapshot(users_folder) == before

    out = tmp_path / "evaluated"
    args = ["eval", str(tiny_model_dir), "--calibration", str(tiny_text_file), "--seqlen", "32", "--eval", "sparsity"]
    assert cli(*args, "--output", str(out)).exit_code == 0
    assert json.loads((out / "run.json").read_text())["metrics"]["sparsity"] >= 0.0
    assert json.loads((out / MARKER).read_text())["kind"] == "eval"
    assert cli(*args, "--output", str(out), "--overwrite").exit_code == 0


def test_output_on_a_symlink_loop_is_refused(tiny_model_dir, tiny_text_file, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    result = cli(*quick_run_args(tiny_model_dir, tiny_text_file, loop / "out"))
    assert result.exit_code == 2 and "symlink loop" in one_sentence(result.output)


def test_unwritable_output_is_refused_before_any_work(tiny_run_values, monkeypatch):
    from lsa_framework.config import build_config
    from lsa_framework.engine import pipeline
    from lsa_framework.engine import session as session_module
    from lsa_framework.errors import BadInputError

    monkeypatch.setattr(
        session_module, "load_model", lambda *a, **k: pytest.fail("loaded before the output was checked")
    )
    unwritable = Path("/sys/lsaf-output")  # read-only even for root
    with pytest.raises(BadInputError, match="Cannot write into /sys"):
        pipeline.run(build_config({**tiny_run_values, "output": unwritable}))


def test_a_second_run_to_the_same_output_is_refused_at_once(tiny_model_dir, tiny_text_file, tmp_path):
    from lsa_framework.storage.lock import output_lock

    out = tmp_path / "out"
    with output_lock(out.resolve()):  # as if another lsaf process were writing it
        result = cli(*quick_run_args(tiny_model_dir, tiny_text_file, out))
    assert result.exit_code == 2 and f"(pid {os.getpid()}) is writing" in one_sentence(result.output)
    assert not out.exists()
    assert cli(*quick_run_args(tiny_model_dir, tiny_text_file, out)).exit_code == 0  # released


def test_stale_temporaries_of_dead_writers_are_removed_and_nothing_else(tiny_model_dir, tiny_text_file, tmp_path):
    dead = tmp_path / ".out.lsaf-tmp-999999-0123abcd"  # pid 999999 is not running
    (dead / "model").mkdir(parents=True)
    (dead / "model" / "model.safetensors").write_bytes(b"x" * 1000)
    alive = tmp_path / f".out.lsaf-tmp-{os.getpid()}-0123abcd"  # this process: a live writer
    alive.mkdir()
    users = tmp_path / ".out.tmp-notours"
    users.mkdir()
    result = cli(*quick_run_args(tiny_model_dir, tiny_text_file, tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert not dead.exists() and alive.exists() and users.exists()

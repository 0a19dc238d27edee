"""The dense model's metrics are evaluated once and then served from lsaf's cache, but only to a run whose
settings and evaluator code are those that produced them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lsa_framework.config import build_config
from lsa_framework.engine import session as session_module
from lsa_framework.engine.observer import Observer
from lsa_framework.engine.plugins import resolve_plugins
from lsa_framework.engine.session import Session


def dense_metrics_of(values: dict, calls: list[int], monkeypatch: pytest.MonkeyPatch) -> dict:
    """The dense metrics a fresh session reports, counting the evaluations it actually ran."""
    config = build_config(values)
    plugins = resolve_plugins(config)
    session = Session(config, plugins.dataset, Observer())
    session.load()
    session.calibrate()
    evaluate = session.evaluate

    def counted(*args, **kwargs):
        calls.append(1)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(session, "evaluate", counted)
    return session.dense_metrics(plugins.evaluators, config)


def test_dense_metrics_are_served_from_the_cache_only_for_the_same_settings_and_code(
    tiny_run_values, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_file = tmp_path / "dense_metrics.json"  # empty at the start: nothing from other tests in the session
    monkeypatch.setattr(session_module._DenseCache, "_path", staticmethod(lambda: cache_file))
    values = {**tiny_run_values, "eval": ["perplexity"]}
    calls: list[int] = []
    first = dense_metrics_of(values, calls, monkeypatch)
    assert len(calls) == 1 and first["perplexity"] > 1.0

    assert dense_metrics_of(values, calls, monkeypatch) == first
    assert len(calls) == 1  # a second session with the same settings: from the cache

    other_text = {**values, "eval_opts": {"perplexity": {"seqlen": 32}}}
    shorter = dense_metrics_of(other_text, calls, monkeypatch)
    assert len(calls) == 2 and shorter["perplexity"] != first["perplexity"]

    monkeypatch.setattr(session_module, "code_digest", lambda instance: "edited")
    assert dense_metrics_of(values, calls, monkeypatch)["perplexity"] == pytest.approx(first["perplexity"])
    assert len(calls) == 3  # the evaluator's code changed: evaluated again


def load_evaluator(path: Path, monkeypatch: pytest.MonkeyPatch):
    """An instance of the class ``Evaluator`` of the module at ``path``, imported for this test only."""
    name = f"lsaf_test_eval_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # inspect finds a module's source through sys.modules
    spec.loader.exec_module(module)
    return module.Evaluator()


def test_code_digest_follows_the_source_of_the_evaluators_module(tmp_path: Path, monkeypatch) -> None:
    source = "class Evaluator:\n    def evaluate(self):\n        return {'x': %s}\n"
    for name, value in (("old", "1.0"), ("new", "2.0"), ("copy", "1.0")):
        (tmp_path / f"{name}.py").write_text(source % value)
    old, new, copy = (load_evaluator(tmp_path / f"{n}.py", monkeypatch) for n in ("old", "new", "copy"))
    assert session_module.code_digest(old) != session_module.code_digest(new)
    assert session_module.code_digest(old) == session_module.code_digest(copy)  # the source, not the name

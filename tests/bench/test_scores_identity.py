"""A bench's saved dense-pass scores are keyed by the scorer's and allocator's validated options, defaults
included: giving a default explicitly is the same scores, and a new option or a changed default is not
(the scores saved before ``rd`` had ``output_norms`` must not be reused by the version that has it)."""

from __future__ import annotations

from lsa_framework.bench.runner import scores_key
from lsa_framework.config import build_config


def _key(**values: object) -> str:
    return scores_key(build_config({"model": "smollm2-135m", "scorer": "rd", "allocator": "layer", **values}), "sha")


def test_an_explicit_default_is_the_same_scores_and_another_value_is_not() -> None:
    assert _key() == _key(scorer_opts={"output_norms": True})
    assert _key() != _key(scorer_opts={"output_norms": False})
    assert _key() == _key(allocator_opts={}) != _key(allocator="block")


def test_the_key_holds_every_default_of_the_options(monkeypatch) -> None:
    from lsa_framework.scorers import rd

    before = _key()
    # a later version with another default: the same command line must mean other scores
    monkeypatch.setattr(rd.RdOptions, "model_dump", lambda self, **kw: {"output_norms": "changed"})
    assert _key() != before

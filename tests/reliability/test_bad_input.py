"""Bad input, table-driven over the config fields, plus files and plugins that fail.

Each case must give exit code 2 (or 1 for a failing plugin), one sentence, and no output folder."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lsa_framework import hookimpl, registry
from lsa_framework.config import RunConfig, build_config
from lsa_framework.errors import BadInputError
from lsa_framework.storage.guard import write_marker
from tests.conftest import make_tiny_llama, make_tokenizer
from tests.fakes import cli, quick_run_args

runner = CliRunner()

# field -> (a value of the wrong type, an out-of-range or unknown value)
FIELD_CASES: dict[str, list[object]] = {
    "dtype": [3, "float8"],
    "scorer": [["lse"], "nope"],
    "allocator": [1.5, "layers"],
    "pruner": [None, "wandda"],
    "sparsity": ["half", 1.5, -0.1],
    "pattern": [24, "5:4", "2:x"],
    "calibration": [7, "no-such-dataset"],
    "nsamples": ["many", 0, -3],
    "seqlen": [1.5, 0],
    "seed": ["zero"],
    "batch_size": [0],
    "eval": [5, ["perplexityy"], "perplexity,nope"],
    "scorer_opts": [{"group_size": -1}, {"unknown_option": 1}],
    "allocator_opts": [{"anything": 1}],
    "pruner_opts": [{"percdamp": "lots"}],
    "eval_opts": [{"perplexity": {"max_tokens": 0}}, {"zeroshot_x": {}}],
    "output": [5],
    "threads": [0],
    "not_a_field": [1],
}


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in FIELD_CASES.items() for v in values], ids=lambda x: str(x)
)
def test_every_field_rejects_bad_values_before_loading(field, value, tiny_run_values, monkeypatch):
    from lsa_framework.engine import pipeline
    from lsa_framework.engine import session as session_module

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the options are validated")

    monkeypatch.setattr(session_module, "load_model", no_load)
    with pytest.raises(BadInputError) as info:
        config = build_config({**tiny_run_values, field: value})
        pipeline.run(config)
    message = str(info.value)
    assert message.count(". ") <= 1 and "\n" not in message  # one sentence
    assert field.split("_")[0] in message.lower() or "unknown" in message.lower() or "did you mean" in message.lower()


@given(
    st.dictionaries(
        st.sampled_from([*sorted(RunConfig.model_fields), "bogus"]),
        st.one_of(
            st.none(),
            st.integers(-5, 5000),
            st.floats(allow_nan=True),
            st.text(max_size=8),
            st.lists(st.text(max_size=4), max_size=3),
            st.dictionaries(st.text(max_size=4), st.integers()),
        ),
        max_size=6,
    )
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_configs_either_validate_or_explain(values):
    try:
        config = build_config(values)
    except BadInputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert 0.0 <= config.target_sparsity < 1.0
    assert config.nsamples > 0 and config.seqlen > 0


def test_corrupt_model_file(tmp_path: Path, tiny_model_dir: Path, tiny_text_file: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    result = cli(*quick_run_args(broken, tiny_text_file, tmp_path / "out"))
    assert result.exit_code == 2 and "Could not load the model" in result.output
    assert not (tmp_path / "out").exists()
    gguf = tmp_path / "corrupt.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    result = cli(*quick_run_args(gguf, tiny_text_file, tmp_path / "out"))
    assert result.exit_code == 2 and "GGUF" in result.output


def test_tokenizer_model_mismatch(tmp_path: Path, tiny_text_file: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    small = tmp_path / "small-vocab"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(small)
    make_tokenizer().save_pretrained(small)  # ~190 tokens for a 50-row embedding
    result = cli(*quick_run_args(small, tiny_text_file, tmp_path / "out"))
    assert result.exit_code == 2 and "tokenizer" in result.output


def test_nan_in_activations_names_the_layer(tmp_path: Path, tiny_text_file: Path):
    model = make_tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    path = tmp_path / "nan-model"
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    result = cli(*quick_run_args(path, tiny_text_file, tmp_path / "out"))
    assert result.exit_code == 2
    assert "decoder layer 1" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_failing_third_party_scorer_is_named_and_output_untouched(tiny_model_dir, tiny_text_file, tmp_path):
    class ExplodingScorer:
        name = "exploding"
        Options = registry.collect("scorers")["uniform"].cls.Options
        needs = frozenset({"input_sq_norm"})

        def __init__(self, options=None):
            pass

        def score(self, unit, stats):
            raise ZeroDivisionError("boom")

        def finish(self, values, target, granularity):
            raise AssertionError("never reached")

    plugin = types.ModuleType("exploding_plugin")
    plugin.lsaf_register_scorers = hookimpl(lambda register: register(ExplodingScorer))  # type: ignore[attr-defined]
    pm = registry.plugin_manager()
    pm.register(plugin, name="exploding_plugin")
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("previous")
    write_marker(out, "run")  # a previous lsaf output, which --overwrite may replace
    try:
        args = quick_run_args(tiny_model_dir, tiny_text_file, out)
        args[args.index("--scorer") + 1] = "exploding"
        result = cli(*args, "--overwrite")
    finally:
        pm.unregister(name="exploding_plugin")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "exploding" in text and "exploding_plugin" in text and "ZeroDivisionError" in text
    assert (out / "run.json").read_text() == "previous"


def test_pickled_checkpoint_is_refused(tmp_path: Path, tiny_text_file: Path):
    pickled = tmp_path / "pickled"
    model = make_tiny_llama(num_layers=1)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # the legacy pickled format
    make_tokenizer().save_pretrained(pickled)
    result = cli(*quick_run_args(pickled, tiny_text_file, tmp_path / "out"))
    assert result.exit_code == 2 and "pickled" in result.output

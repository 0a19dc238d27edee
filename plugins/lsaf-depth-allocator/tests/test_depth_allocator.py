"""The depth allocator: linear in depth, exact mean, validated options, and a real ``lsaf run``.

Expected values are computed here from the formula s_i = target − δ + 2δ·i/(L − 1), independently of
the allocator's code; the end-to-end test builds a tiny random Llama and drives the installed CLI.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest
import torch
from lsa_framework import hookspecs
from lsa_framework.types import Layout, LinearInfo, Scores, Unit
from pydantic import ValidationError

import lsaf_depth_allocator
from lsaf_depth_allocator import DepthAllocator, DepthOptions

NO_SCORES = Scores(values={}, higher_is_important=True, spread=0.0)


def weighted_mean(sparsities: dict[str, float], sizes: dict[str, int]) -> float:
    return sum(sparsities[n] * sizes[n] for n in sizes) / sum(sizes.values())


@pytest.mark.parametrize(("layers", "target", "delta"), [(2, 0.5, 0.1), (3, 0.5, 0.1), (30, 0.7, 0.2), (12, 0.3, 0.0)])
def test_equal_layers_get_the_linear_ramp(layers, target, delta):
    sizes = {f"layer.{i}": 1000 for i in range(layers)}
    got = DepthAllocator(DepthOptions(delta=delta)).allocate(NO_SCORES, sizes, target)
    for i in range(layers):
        assert got[f"layer.{i}"] == pytest.approx(target - delta + 2 * delta * i / (layers - 1), abs=1e-9)
    assert sum(got.values()) / layers == pytest.approx(target, abs=1e-9)


def test_order_is_by_layer_index_not_by_name():
    names = [f"layer.{i}" for i in range(12)]
    random.Random(0).shuffle(names)  # "layer.10" would sort before "layer.2" as text
    sizes = dict.fromkeys(names, 500)
    got = DepthAllocator().allocate(NO_SCORES, sizes, 0.5)
    assert [got[f"layer.{i}"] for i in range(12)] == sorted(got.values())
    assert got["layer.0"] == pytest.approx(0.4) and got["layer.11"] == pytest.approx(0.6)


def test_unequal_layers_keep_the_slope_and_the_exact_mean():
    rng = random.Random(1)
    sizes = {f"layer.{i}": rng.randint(1_000, 50_000) for i in range(7)}
    target, delta = 0.6, 0.15
    got = DepthAllocator(DepthOptions(delta=delta)).allocate(NO_SCORES, sizes, target)
    steps = [got[f"layer.{i + 1}"] - got[f"layer.{i}"] for i in range(6)]
    assert steps == pytest.approx([2 * delta / 6] * 6, abs=1e-9)
    assert weighted_mean(got, sizes) == pytest.approx(target, abs=1e-9)


def test_clipped_ramp_stays_monotone_in_range_and_exact():
    sizes = {f"layer.{i}": 1000 * (i + 1) for i in range(5)}
    got = DepthAllocator(DepthOptions(delta=0.2)).allocate(NO_SCORES, sizes, 0.05)  # raw ramp starts at −0.15
    values = [got[f"layer.{i}"] for i in range(5)]
    assert all(0.0 <= v <= 0.99 for v in values)
    assert values == sorted(values) and values[0] == 0.0
    assert weighted_mean(got, sizes) == pytest.approx(0.05, abs=1e-6)


def test_options_are_validated():
    assert DepthOptions().delta == 0.1
    assert DepthOptions(delta=0.0).delta == 0.0
    assert DepthOptions(delta=0.49).delta == 0.49
    for bad in (-0.01, 0.5, 0.9):
        with pytest.raises(ValidationError):
            DepthOptions(delta=bad)
    with pytest.raises(ValidationError):
        DepthOptions(deltaa=0.1)  # type: ignore[call-arg]


def test_units_are_one_per_decoder_layer():
    linears = [
        [
            LinearInfo(f"model.layers.{i}.{p}", i, "attention" if p == "q" else "mlp", p, p, torch.nn.Linear(4, 4))
            for p in ("q", "down")
        ]
        for i in range(3)
    ]
    layout = Layout("test", [torch.nn.Identity() for _ in range(3)], linears)
    units = DepthAllocator().units(layout)
    assert units == [Unit(f"layer.{i}", i, tuple(linears[i])) for i in range(3)]


def test_registers_through_the_hook():
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(lsaf_depth_allocator)
    registered: list[type] = []
    pm.hook.lsaf_register_allocators(register=registered.append)
    assert registered == [DepthAllocator]


# --- end to end: the installed package, found through its entry point by the real CLI -------------

WORDS = [f"w{i}" for i in range(180)] + ["the", "a", "of", "and", "to", "in", ".", ","]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]")


def make_text(n_docs: int, words_per_doc: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words_per_doc)) for _ in range(n_docs)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 2,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).eval().save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    text = tmp_path_factory.mktemp("text") / "corpus.txt"
    text.write_text("\n\n".join(make_text(10, 300, seed=1)) + "\n")
    return model_dir, text


def lsaf(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("lsaf")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lsa_framework"]
    env = {
        **os.environ,
        "LSAF_LOAD_PLUGINS": "lsaf-depth-allocator",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "COLUMNS": "200",
    }
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300)


def test_lsaf_list_shows_depth_with_its_package():
    proc = lsaf("list", "allocators")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if " depth " in line]
    assert len(rows) == 1 and "lsaf-depth-allocator" in rows[0], proc.stdout


def test_lsaf_run_with_depth_prunes_deeper_layers_more(tiny_model, tmp_path):
    model_dir, text = tiny_model
    output = tmp_path / "out"
    proc = lsaf(
        "run", "--model", str(model_dir), "--calibration", str(text),
        "--allocator", "depth", "--scorer", "uniform", "--sparsity", "0.5",
        "--nsamples", "4", "--seqlen", "32", "--eval", "sparsity", "--output", str(output), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads((output / "run.json").read_text())
    units = sorted(run["units"], key=lambda u: u["layer"])
    assert [u["name"] for u in units] == ["layer.0", "layer.1", "layer.2"]
    for i, unit in enumerate(units):
        expected = 0.5 - 0.1 + 0.2 * i / 2
        assert unit["sparsity"] == pytest.approx(expected, abs=1e-6)
        # A non-uniform allocation: Wanda prunes round(numel·s) of every linear (rounding=exact), so a
        # layer's realised sparsity is within half a weight per linear of the allocation.
        assert run["allocation"]["pruning"]["rounding"] == "exact"
        numel = unit["numel"]
        assert abs(unit["realised"] - expected) <= 7 * 0.5 / numel + 1e-12
    per_layer = [run["metrics"][f"sparsity.layer.{i}"] for i in range(3)]
    assert per_layer[0] < per_layer[1] < per_layer[2]


def test_lsaf_run_rejects_a_bad_delta(tiny_model, tmp_path):
    model_dir, text = tiny_model
    proc = lsaf(
        "run", "--model", str(model_dir), "--calibration", str(text), "--scorer", "uniform",
        "--allocator", "depth", "--allocator-opt", "delta=0.5", "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "delta" in proc.stderr and "depth" in proc.stderr
    assert not (tmp_path / "out").exists()

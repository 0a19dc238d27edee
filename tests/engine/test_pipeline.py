"""The whole pipeline on a tiny Llama, against a plain sequential reference written here."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lsa_framework.config import build_config
from lsa_framework.data.windows import sample_windows
from lsa_framework.engine.pipeline import run
from tests.conftest import make_tokenizer

PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def reference_wanda(
    model_dir: Path, input_ids: torch.Tensor, sparsity: float, sequential: bool = True
) -> dict[str, torch.Tensor]:
    """Sequential Wanda the way the original script does it: a hook per projection, one mask each.

    With ``sequential=False`` each layer's statistics come from the dense model (the basic pipeline).
    """
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = model.model.layers
    captured: dict = {}

    def grab(_m, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]
        captured["kw"] = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values", "cache")}
        raise RuntimeError("stop")

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad(), contextlib.suppress(RuntimeError):
        model(input_ids=input_ids, use_cache=False)
    handle.remove()
    h, kw = captured["h"], captured["kw"]
    masks = {}
    with torch.no_grad():
        for i, layer in enumerate(layers):
            norms: dict[str, torch.Tensor] = {}
            hooks = []
            for path in PROJECTIONS:

                def record(_m, args, _path=path, norms=norms):
                    x = args[0].reshape(-1, args[0].shape[-1]).float()
                    norms[_path] = (x**2).sum(0) / input_ids.shape[0]

                hooks.append(layer.get_submodule(path).register_forward_pre_hook(record))
            dense_out = layer(h, **kw)
            for hk in hooks:
                hk.remove()
            for path in PROJECTIONS:
                w = layer.get_submodule(path).weight
                metric = w.abs() * norms[path].sqrt()
                k = int(w.shape[1] * sparsity)
                idx = torch.sort(metric, dim=1, stable=True)[1][:, :k]
                mask = torch.zeros_like(w, dtype=torch.bool).scatter_(1, idx, True)
                w[mask] = 0
                masks[f"model.layers.{i}.{path}"] = mask
            out = layer(h, **kw) if sequential else dense_out
            h = out[0] if isinstance(out, tuple) else out
    return masks


def test_uniform_wanda_matches_sequential_reference(tiny_run_values, tiny_model_dir, tmp_path):
    config = build_config(
        {
            **tiny_run_values,
            "scorer": "uniform",
            "pruner": "wanda",
            "sparsity": 0.5,
            "output": tmp_path / "out",
            "batch_size": 8,
        }
    )
    result = run(config)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    documents = _calibration_documents(config)
    ids = sample_windows(make_tokenizer(), documents, config.nsamples, config.seqlen, config.seed)
    expected = reference_wanda(tiny_model_dir, ids, 0.5)
    for name, mask in expected.items():
        weight = saved.get_submodule(name).weight
        assert torch.equal(weight == 0, mask), name
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=1e-9)
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(run_json["mask_sha256"]) == set(expected)
    assert (tmp_path / "out" / "report.md").is_file()
    assert (tmp_path / "out" / "sparsity_profile.png").stat().st_size > 0


def test_basic_pipeline_prunes_from_dense_statistics(tiny_run_values, tiny_model_dir, tmp_path):
    values = {**tiny_run_values, "scorer": "uniform", "pruner": "wanda", "sparsity": 0.5, "batch_size": 8}
    config = build_config({**values, "pipeline": "basic", "output": tmp_path / "out"})
    result = run(config)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    ids = sample_windows(make_tokenizer(), _calibration_documents(config), config.nsamples, config.seqlen, config.seed)
    expected = reference_wanda(tiny_model_dir, ids, 0.5, sequential=False)
    for name, mask in expected.items():
        assert torch.equal(saved.get_submodule(name).weight == 0, mask), name
    sequential = reference_wanda(tiny_model_dir, ids, 0.5, sequential=True)
    assert any(not torch.equal(sequential[n], expected[n]) for n in expected if ".layers.0." not in n)
    assert all(torch.equal(sequential[n], expected[n]) for n in expected if ".layers.0.self_attn.q" in n)
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=1e-9)


def test_basic_pipeline_sparsegpt_after_lse_scoring(tiny_run_values):
    result = run(build_config({**tiny_run_values, "pruner": "sparsegpt", "pipeline": "basic", "sparsity": 0.6}))
    assert result.metrics["sparsity"] == pytest.approx(0.6, abs=1.0 / 64)
    assert math.isfinite(result.metrics["perplexity"])


def _calibration_documents(config):
    from lsa_framework.engine.plugins import resolve_dataset

    return resolve_dataset(config).instance.documents("calibration")


def test_perplexity_rises_with_sparsity(tiny_run_values):
    ppl = {}
    for s in (0.0, 0.5, 0.8):
        config = build_config({**tiny_run_values, "scorer": "uniform", "pruner": "magnitude", "sparsity": s})
        ppl[s] = run(config).metrics["perplexity"]
    assert ppl[0.0] < ppl[0.5] < ppl[0.8]


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_every_pruner_hits_exact_sparsity(tiny_run_values, pruner, pattern):
    config = build_config(
        {
            **tiny_run_values,
            "scorer": "uniform",
            "pruner": pruner,
            "pattern": pattern,
            "eval": ["sparsity"],
            "eval_opts": {},
        }
    )
    result = run(config)
    for unit in result.units:
        # per-row rounding: int(in * 0.5) is exact for our even widths
        assert unit.realised == pytest.approx(0.5, abs=1e-9), unit.name


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights_prune_exactly(tiny_run_values, dtype):
    config = build_config({**tiny_run_values, "dtype": dtype, "scorer": "lse", "pruner": "sparsegpt", "sparsity": 0.5})
    result = run(config)
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=1.0 / 64)
    assert all(abs(u.realised - u.sparsity) <= 1.0 / 64 for u in result.units)
    assert math.isfinite(result.metrics["perplexity"])

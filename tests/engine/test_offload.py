"""``--offload disk``: layers streamed from safetensors shards give the same pruned model as in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run
from lsa_framework.errors import BadInputError
from lsa_framework.model.loading import load_model
from tests.conftest import make_tiny_llama, make_tokenizer


@pytest.fixture(scope="module")
def sharded_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny trained model re-saved in several small shards, as a large model is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(path, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    assert len(list(path.glob("*.safetensors"))) > 2
    return path


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


@pytest.mark.parametrize(
    ("pruner", "scorer", "pipeline"),
    [("wanda", "lse", "sequential"), ("sparsegpt", "owl", "sequential"), ("magnitude", "uniform", "sequential"),
     ("sparsegpt", "lse", "basic")],
)  # fmt: skip
def test_offloaded_run_equals_in_memory_run(tiny_run_values, sharded_model_dir, tmp_path, pruner, scorer, pipeline):
    values = {**tiny_run_values, "model": str(sharded_model_dir), "pruner": pruner, "scorer": scorer}
    values["pipeline"] = pipeline
    in_memory = run(build_config({**values, "output": tmp_path / "memory"}))
    offloaded = run(build_config({**values, "offload": "disk", "output": tmp_path / "disk"}))

    assert offloaded.mask_hashes == in_memory.mask_hashes
    assert [(u.name, u.sparsity, u.realised) for u in offloaded.units] == [
        (u.name, u.sparsity, u.realised) for u in in_memory.units
    ]
    assert offloaded.metrics["perplexity"] == pytest.approx(in_memory.metrics["perplexity"], rel=1e-6)
    assert offloaded.metrics["sparsity"] == in_memory.metrics["sparsity"]
    expected = _weights(tmp_path / "memory" / "model")
    saved = _weights(tmp_path / "disk" / "model")
    assert sorted(saved) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(saved[name], tensor), name
    index = json.loads((tmp_path / "disk" / "model" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected)
    assert not list(tmp_path.glob(".*partial*")), "the staging folder must be gone after the run"


def test_offloaded_output_loads_with_transformers(tiny_run_values, sharded_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    values = {**tiny_run_values, "model": str(sharded_model_dir), "offload": "disk"}
    values.update(eval=["sparsity"], eval_opts={})
    result = run(build_config({**values, "output": tmp_path / "out"}))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    projections = [m for name, m in reloaded.named_modules() if name.endswith("_proj")]
    zeros = sum(int((m.weight == 0).sum()) for m in projections)
    assert zeros / sum(m.weight.numel() for m in projections) == pytest.approx(result.metrics["sparsity"], abs=1e-12)
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_layers_are_in_memory_only_while_resident(sharded_model_dir, tmp_path):
    loaded = load_model(str(sharded_model_dir), offload_staging=tmp_path / "staging")
    layout = loaded.layout()
    weights = [info.module.weight for layer in layout.linears for info in layer]
    assert all(w.is_meta for w in weights)
    assert not loaded.model.get_input_embeddings().weight.is_meta
    with layout.resident(1):
        q = layout.linears[1][0].module
        assert not q.weight.is_meta
        assert layout.linears[0][0].module.weight.is_meta
        with torch.no_grad():
            q.weight[0, 0] = 0.0  # an edit: the layer must be written back when it leaves memory
    assert q.weight.is_meta
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["layer-00001.safetensors"]
    with layout.resident(1):
        assert float(q.weight[0, 0].detach()) == 0.0  # read back from the staged shard
    with layout.resident(2):
        pass  # unchanged: not written
    assert len(list((tmp_path / "staging").iterdir())) == 1


def test_offloaded_forward_matches_in_memory_forward(sharded_model_dir, tmp_path):
    ids = torch.randint(0, 50, (2, 16))
    dense = load_model(str(sharded_model_dir))
    offloaded = load_model(str(sharded_model_dir), offload_staging=tmp_path)
    with torch.no_grad():
        expected = dense.model(input_ids=ids).logits
        got = offloaded.model(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert all(info.module.weight.is_meta for layer in offloaded.layout().linears for info in layer)


def test_tied_embeddings_are_loaded_and_saved_once(tmp_path):
    model = make_tiny_llama(num_layers=2)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path / "tied")
    make_tokenizer().save_pretrained(tmp_path / "tied")
    loaded = load_model(str(tmp_path / "tied"), offload_staging=tmp_path / "staging")
    assert loaded.model.get_output_embeddings().weight is loaded.model.get_input_embeddings().weight
    loaded.save(tmp_path / "saved")
    saved = _weights(tmp_path / "saved")
    assert "lm_head.weight" not in saved
    assert torch.equal(saved["model.embed_tokens.weight"], model.model.embed_tokens.weight)


def test_offload_refuses_gguf_and_folders_without_safetensors(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(BadInputError, match="not GGUF"):
        load_model(str(gguf), offload_staging=tmp_path / "s")
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(make_tiny_llama(1).config.to_dict()))
    with pytest.raises(BadInputError, match=r"neither model\.safetensors"):
        load_model(str(folder), offload_staging=tmp_path / "s")


@pytest.mark.slow
def test_offloaded_run_resumes_after_sigkill(sharded_model_dir, tiny_text_file, tmp_path):
    from tests.reliability.test_resume import lsaf

    common = ["run", "--model", str(sharded_model_dir), "--calibration", str(tiny_text_file), "--nsamples", "8",
              "--seqlen", "64", "--pruner", "sparsegpt", "--eval", "sparsity", "--quiet"]  # fmt: skip
    assert lsaf([*common, "--output", str(tmp_path / "memory")]).returncode == 0
    out = tmp_path / "disk"
    assert lsaf([*common, "--offload", "disk", "--output", str(out)], killer=True).returncode == -9
    resumed = lsaf([*common, "--offload", "disk", "--output", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    runs = [json.loads((tmp_path / name / "run.json").read_text()) for name in ("memory", "disk")]
    assert runs[1]["mask_sha256"] == runs[0]["mask_sha256"]
    expected, saved = _weights(tmp_path / "memory" / "model"), _weights(out / "model")
    assert all(torch.equal(saved[name], tensor) for name, tensor in expected.items())

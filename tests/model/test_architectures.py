"""Every supported family, pruned end to end, checked against the model's own forward.

For each family (tiny random models from ``tests.architectures``):

* sequential Wanda masks equal a plain-torch reference computed here from the model's *own* forward:
  layer i's input norms come from hooks on its linears during a full ``model(...)`` call in which layers
  0..i-1 are already pruned (the definition of the sequential scheme), with no engine code involved;
* the default LSA run, OWL at block granularity and SparseGPT 2:4 run, realise their sparsity in the
  weights, and the saved model reloads with ``from_pretrained`` and gives finite logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from lsa_framework.config import build_config
from lsa_framework.data.windows import sample_windows
from lsa_framework.engine.pipeline import run
from lsa_framework.engine.plugins import resolve_dataset
from tests.architectures import EXPECTED, FAMILIES, MOE_FAMILIES, save_tiny_model

DENSE = [f for f in FAMILIES if f not in MOE_FAMILIES]
ROUTERS = ("gate", "router", "shared_expert_gate")


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folders = {}
    for family in DENSE:
        folder = tmp_path_factory.mktemp(family)
        save_tiny_model(family, folder)
        folders[family] = folder
    return folders


def _values(folder: Path, text: Path, **extra: object) -> dict:
    return {"model": str(folder), "calibration": str(text), "nsamples": 4, "seqlen": 32, "batch_size": 2,
            "eval": ["perplexity", "sparsity"], "eval_opts": {"perplexity": {"seqlen": 8}}, "eval_dense": False,
            **extra}  # fmt: skip


def _linears(layer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {
        path: m
        for path, m in layer.named_modules()
        if isinstance(m, torch.nn.Linear | Conv1D) and path.rsplit(".", 1)[-1] not in ROUTERS
    }


def _weight(module: torch.nn.Module) -> torch.Tensor:
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def reference_sequential_wanda(folder: Path, ids: torch.Tensor, layers_path: str, sparsity: float, batch: int):
    """Wanda, layer by layer, with each layer's input norms taken from the model's own full forward."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    masks: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(model.get_submodule(layers_path)):
        norms: dict[str, torch.Tensor] = {}
        hooks = []
        for path, module in _linears(layer).items():

            def record(_m, args, _path=path, norms=norms):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                norms[_path] = norms.get(_path, 0) + (x**2).sum(0)

            hooks.append(module.register_forward_pre_hook(record))
        with torch.no_grad():
            for start in range(0, ids.shape[0], batch):
                model(input_ids=ids[start : start + batch], use_cache=False)
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for path, module in _linears(layer).items():
                w = _weight(module)
                metric = w.abs() * (norms[path] / ids.shape[0]).sqrt()
                k = int(w.shape[1] * sparsity)
                order = torch.sort(metric, dim=1, stable=True)[1][:, :k]
                mask = torch.zeros_like(w, dtype=torch.bool).scatter_(1, order, True)
                w[mask] = 0
                masks[f"{layers_path}.{index}.{path}"] = mask
    return masks


@pytest.mark.parametrize("family", DENSE)
def test_sequential_wanda_equals_the_models_own_forward(family, family_dirs, tiny_text_file, tmp_path):
    values = _values(family_dirs[family], tiny_text_file, scorer="uniform", pruner="wanda", sparsity=0.5,
                     output=tmp_path / "out", eval=["sparsity"], eval_opts={})  # fmt: skip
    config = build_config(values)
    run(config)
    documents = resolve_dataset(config).documents("calibration")
    tokenizer = AutoTokenizer.from_pretrained(family_dirs[family])  # the family's own class, as the run uses
    # Gemma is trained with <bos> at the start of every sequence, so its windows start with it
    bos = AutoConfig.from_pretrained(family_dirs[family]).bos_token_id if family.startswith("gemma") else None
    ids = sample_windows(tokenizer, documents, config.nsamples, config.seqlen, config.seed, bos)
    layers_path = EXPECTED[family].layers
    expected = reference_sequential_wanda(family_dirs[family], ids, layers_path, 0.5, config.batch_size)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    for name, mask in expected.items():
        assert torch.equal(_weight(saved.get_submodule(name)) == 0, mask), name


CONFIGURATIONS = {
    "lsa (lse, layer, wanda)": {"sparsity": 0.6},
    "owl at block granularity": {"scorer": "owl", "allocator": "block", "sparsity": 0.6},
    "sparsegpt 2:4": {"scorer": "uniform", "pruner": "sparsegpt", "pattern": "2:4"},
}


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
@pytest.mark.parametrize("family", DENSE)
def test_family_runs_saves_and_reloads(family, configuration, family_dirs, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    result = run(
        build_config(_values(family_dirs[family], tiny_text_file, output=out, **CONFIGURATIONS[configuration]))
    )
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    zeros = total = 0
    for layer in model.get_submodule(EXPECTED[family].layers):
        for module in _linears(layer).values():
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    target = 0.5 if configuration == "sparsegpt 2:4" else 0.6
    # per-row rounding down (int(in·s)) and the weights' own zeros: within one weight per row of the target
    assert abs(zeros / total - target) < 0.02, zeros / total
    assert result.metrics["sparsity"] == pytest.approx(zeros / total, abs=1e-12)
    with torch.no_grad():
        logits = model(input_ids=torch.randint(0, 190, (1, 16)), use_cache=False).logits
    assert torch.isfinite(logits).all()

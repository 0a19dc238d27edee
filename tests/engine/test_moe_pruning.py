"""Pruning tiny random mixtures of experts end to end (``lsaf run``), checked against plain torch.

Models: Mixtral, Qwen2-MoE (shared expert) and Qwen3-MoE (layer 1 dense), 2 layers, 4 experts, top-2,
saved with ``save_pretrained`` and loaded by the engine like any model folder. The references re-run the
model in plain torch, route with the block's own router (``tests.moe_reference.route_experts``) and
compute each expert's Wanda / SparseGPT / magnitude mask from the tokens routed to it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lsa_framework import hookimpl, registry
from lsa_framework.config import build_config
from lsa_framework.data.windows import sample_windows
from lsa_framework.engine.pipeline import run
from lsa_framework.engine.plugins import resolve_dataset
from lsa_framework.pruners.masks import sparsegpt_prune
from lsa_framework.types import Pattern
from tests.architectures import MOE_FAMILIES
from tests.moe_models import UNROUTED_EXPERT, matrix_smallest, row_smallest, save_moe
from tests.moe_reference import is_sparse_moe_block, route_experts

torch.set_num_threads(1)

NSAMPLES, SEQLEN = 8, 64


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    folders = {family: save_moe(family, root / family) for family in MOE_FAMILIES}
    folders["mixtral-sharded"] = save_moe("mixtral", root / "mixtral-sharded", shard="60KB")
    folders["qwen2_moe-sharded"] = save_moe("qwen2_moe", root / "qwen2_moe-sharded", shard="60KB")
    folders["unrouted"] = save_moe("qwen2_moe", root / "unrouted", unrouted=True)
    assert len(list(folders["mixtral-sharded"].glob("*.safetensors"))) > 2
    return folders


def values(folder: Path, text: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(folder),
        "calibration": str(text),
        "nsamples": NSAMPLES,
        "seqlen": SEQLEN,
        "batch_size": NSAMPLES,  # one batch: the reference's single forward sums in the same order
        "eval": ["sparsity"],
        "scorer": "owl",
        "allocator": "expert",
        "pruner": "wanda",
        "sparsity": 0.6,
        **extra,
    }


def load(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def calibration_ids(config_values: dict[str, Any]) -> torch.Tensor:
    """The windows the run calibrates on (the engine's own sampler; not what is under test here)."""
    from transformers import AutoTokenizer

    config = build_config(config_values)
    documents = resolve_dataset(config).documents("calibration")
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    return sample_windows(tokenizer, documents, config.nsamples, config.seqlen, config.seed)


def block_input(model: Any, index: int, ids: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.model.layers[index].mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(ids, use_cache=False)
    handle.remove()
    return seen[0]


def unit_sparsity(result: Any) -> dict[str, float]:
    return {u.name: u.sparsity for u in result.units}


def reference_masks(
    dense: Any, pruned: Any, ids: torch.Tensor, sparsity: dict[str, float], sequential: bool, mask_of: Any
) -> dict[tuple[int, int, str], torch.Tensor]:
    """Per (layer, expert, matrix), the mask ``mask_of(weight, routed inputs, sparsity)`` gives.

    Sequential: layer i's tokens come from layers < i already pruned — the experts by the reference's own
    masks, the other linears (attention, shared expert) with the run's pruned weights copied in."""
    masks: dict[tuple[int, int, str], torch.Tensor] = {}
    inputs = None if sequential else {i: block_input(dense, i, ids) for i in range(len(dense.model.layers))}
    for index, layer in enumerate(dense.model.layers):
        hidden = block_input(dense, index, ids) if sequential else inputs[index]  # type: ignore[index]
        if is_sparse_moe_block(layer.mlp):
            with torch.no_grad():
                routing = route_experts(layer.mlp, hidden)
            for tokens in routing.experts:
                s = sparsity[f"layer.{index}.experts.{tokens.expert}"]
                for parameter, x in (("gate_up_proj", tokens.gate_up_input), ("down_proj", tokens.down_input)):
                    weight = getattr(layer.mlp.experts, parameter)[tokens.expert].detach()
                    masks[(index, tokens.expert, parameter)] = mask_of(weight, x, s)
        if sequential:
            with torch.no_grad():
                for (i, e, parameter), mask in masks.items():
                    if i == index:
                        getattr(layer.mlp.experts, parameter)[e].masked_fill_(mask, 0)
                ours = dict(layer.named_parameters())
                for name, param in pruned.model.layers[index].named_parameters():
                    if "experts." not in name:
                        ours[name].copy_(param)
    return masks


def wanda_reference(weight: torch.Tensor, x: torch.Tensor, s: float) -> torch.Tensor:
    metric = weight.abs() * torch.sqrt((x.float() ** 2).sum(0) / NSAMPLES)[None, :]
    return row_smallest(metric, int(weight.shape[1] * s))


def expert_zeros(model: Any) -> dict[tuple[int, int, str], torch.Tensor]:
    found = {}
    for index, layer in enumerate(model.model.layers):
        if is_sparse_moe_block(layer.mlp):
            for parameter in ("gate_up_proj", "down_proj"):
                tensor = getattr(layer.mlp.experts, parameter).detach()
                for e in range(tensor.shape[0]):
                    found[(index, e, parameter)] = tensor[e] == 0
    return found


@pytest.mark.parametrize("pipeline", ["basic", "sequential"])
@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_wanda_masks_per_expert_equal_plain_torch_from_routed_tokens(
    moe_dirs, tiny_text_file, tmp_path, family, pipeline
):
    # the reference's per-row rule (Wanda's floor); the exact rounding of non-uniform runs is tested elsewhere
    floor = {"rounding": "floor"}
    config = values(moe_dirs[family], tiny_text_file, pipeline=pipeline, output=tmp_path / "out", pruner_opts=floor)
    result = run(build_config(config))
    pruned = load(tmp_path / "out" / "model")
    expected = reference_masks(
        load(moe_dirs[family]), pruned, calibration_ids(config), unit_sparsity(result), pipeline == "sequential",
        wanda_reference,
    )  # fmt: skip
    got = expert_zeros(pruned)
    assert sorted(got) == sorted(expected) and len(got) >= 8
    for key, mask in expected.items():
        assert torch.equal(got[key], mask), key
    routing = json.loads((tmp_path / "out" / "run.json").read_text())["extra"]["routing"]
    assert routing["inputs_scaled_by_routing_weights"] is False
    assert sum(routing["tokens_per_expert"]["scoring"]["layer.0"]) == 2 * NSAMPLES * SEQLEN  # top-2 of every token


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_realised_sparsity_is_exact_per_expert_and_overall_and_the_model_reloads(
    moe_dirs, tiny_text_file, tmp_path, family
):
    target = 0.6
    result = run(build_config(values(moe_dirs[family], tiny_text_file, output=tmp_path / "out")))
    pruned = load(tmp_path / "out" / "model")
    sparsity = unit_sparsity(result)
    experts = {n: s for n, s in sparsity.items() if ".experts." in n}
    assert max(experts.values()) - min(experts.values()) > 0.01  # OWL scores give experts different sparsities
    # exact: the parameter-weighted mean over all units, counted from the model's own parameters
    total = pruned_total = zeros = 0
    for index, layer in enumerate(pruned.model.layers):
        for name, param in layer.named_parameters():
            if param.dim() < 2 or name.endswith(("gate.weight", "shared_expert_gate.weight")):
                continue  # norms, routers and the shared expert's gate are not pruned
            if "experts." in name and param.dim() == 3:
                for e in range(param.shape[0]):  # a non-uniform allocation: Wanda hits round(numel * s) exactly
                    s = sparsity[f"layer.{index}.experts.{e}"]
                    assert int((param[e] == 0).sum()) == math.floor(param[e].numel() * s + 0.5), (name, e)
                    pruned_total += s * param[e].numel()
            else:
                block = "attention" if "self_attn" in name else "shared_expert" if "shared" in name else "mlp"
                unit = f"layer.{index}.{block}"
                pruned_total += sparsity[unit] * param.numel()
            total += param.numel()
            zeros += int((param == 0).sum())
    assert pruned_total / total == pytest.approx(target, abs=1e-4)
    assert result.metrics["sparsity"] == pytest.approx(zeros / total, abs=1e-12)
    assert sum(u.numel for u in result.units) == total
    with torch.no_grad():
        logits = pruned(torch.arange(16)[None], use_cache=False).logits
    assert torch.isfinite(logits).all()


def test_sparsegpt_per_expert_uses_the_gram_of_its_routed_tokens(moe_dirs, tiny_text_file, tmp_path):
    config = values(
        moe_dirs["qwen2_moe"], tiny_text_file, pruner="sparsegpt", pipeline="basic", output=tmp_path / "out"
    )
    result = run(build_config(config))
    pruned, dense = load(tmp_path / "out" / "model"), load(moe_dirs["qwen2_moe"])
    ids, sparsity = calibration_ids(config), unit_sparsity(result)
    for index, layer in enumerate(dense.model.layers):
        with torch.no_grad():
            routing = route_experts(layer.mlp, block_input(dense, index, ids))
        for tokens in routing.experts:
            s = sparsity[f"layer.{index}.experts.{tokens.expert}"]
            for parameter, x in (("gate_up_proj", tokens.gate_up_input), ("down_proj", tokens.down_input)):
                weight = getattr(layer.mlp.experts, parameter)[tokens.expert].detach()
                gram = 2.0 / NSAMPLES * x.T.double() @ x.double()
                want, mask = sparsegpt_prune(weight, gram.float(), s, Pattern(), blocksize=128, percdamp=0.01)
                got = getattr(pruned.model.layers[index].mlp.experts, parameter)[tokens.expert].detach()
                assert torch.equal(got == 0, mask), (index, tokens.expert, parameter)
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_two_four_pattern_in_every_expert(moe_dirs, tiny_text_file, tmp_path):
    config = values(moe_dirs["mixtral"], tiny_text_file, pattern="2:4", sparsity=0.5, pipeline="basic")
    run(build_config({**config, "output": tmp_path / "out"}))
    pruned, dense = load(tmp_path / "out" / "model"), load(moe_dirs["mixtral"])

    def two_of_four(weight: torch.Tensor, x: torch.Tensor, s: float) -> torch.Tensor:
        metric = weight.abs() * torch.sqrt((x.float() ** 2).sum(0) / NSAMPLES)[None, :]
        rows, cols = metric.shape
        return row_smallest(metric.reshape(rows * cols // 4, 4), 2).reshape(rows, cols)

    got = expert_zeros(pruned)
    for key, mask in got.items():
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all(), key  # 2 zeros in every 4 inputs
    sparsity = {f"layer.{i}.experts.{e}": 0.5 for i in range(2) for e in range(4)}
    expected = reference_masks(dense, pruned, calibration_ids(config), sparsity, False, two_of_four)
    assert sorted(expected) == sorted(got)
    for key, mask in expected.items():
        assert torch.equal(got[key], mask), key


def test_magnitude_prunes_each_expert_by_its_weights_alone(moe_dirs, tiny_text_file, tmp_path):
    config = values(moe_dirs["mixtral"], tiny_text_file, scorer="uniform", allocator="layer", pruner="magnitude")
    result = run(build_config({**config, "output": tmp_path / "out"}))
    pruned, dense = load(tmp_path / "out" / "model"), load(moe_dirs["mixtral"])
    got = expert_zeros(pruned)
    for (index, e, parameter), mask in got.items():
        weight = getattr(dense.model.layers[index].mlp.experts, parameter)[e].detach()
        assert torch.equal(mask, matrix_smallest(weight.abs(), int(weight.numel() * 0.6)))
    assert "routing" not in result.extra  # no calibration forward ran, so nothing was routed


def test_an_expert_without_calibration_tokens_falls_back_to_magnitude(moe_dirs, tiny_text_file, tmp_path):
    for pruner in ("wanda", "sparsegpt"):
        out = tmp_path / pruner
        result = run(build_config(values(moe_dirs["unrouted"], tiny_text_file, pruner=pruner, output=out)))
        routing = json.loads((out / "run.json").read_text())["extra"]["routing"]
        name = f"layer.0.experts.{UNROUTED_EXPERT}"
        assert routing["unrouted_experts"] == {"scoring": [name], "pruning": [name]}
        assert routing["tokens_per_expert"]["pruning"]["layer.0"][UNROUTED_EXPERT] == 0
        prefix = f"model.layers.0.mlp.experts.{UNROUTED_EXPERT}."
        assert sorted(routing["magnitude_fallback"]) == [prefix + "down_proj", prefix + "gate_up_proj"]
        pruned, dense = load(out / "model"), load(moe_dirs["unrouted"])
        s = unit_sparsity(result)[name]
        for parameter in ("gate_up_proj", "down_proj"):
            weight = getattr(dense.model.layers[0].mlp.experts, parameter)[UNROUTED_EXPERT].detach()
            got = getattr(pruned.model.layers[0].mlp.experts, parameter)[UNROUTED_EXPERT].detach()
            assert torch.equal(got == 0, matrix_smallest(weight.abs(), int(weight.numel() * s)))
            assert torch.equal(got[got != 0], weight[got != 0])  # kept weights untouched (no update without data)
        assert all(torch.isfinite(p).all() for p in pruned.parameters())


@pytest.mark.parametrize(("family", "pruner"), [("mixtral-sharded", "wanda"), ("qwen2_moe-sharded", "sparsegpt")])
def test_offloaded_run_equals_in_memory_run(moe_dirs, tiny_text_file, tmp_path, family, pruner):
    config = values(moe_dirs[family], tiny_text_file, pruner=pruner, eval=["sparsity", "perplexity"])
    config["eval_opts"] = {"perplexity": {"seqlen": SEQLEN}}
    memory = run(build_config({**config, "output": tmp_path / "memory"}))
    disk = run(build_config({**config, "offload": "disk", "output": tmp_path / "disk"}))
    assert disk.mask_hashes == memory.mask_hashes and len(memory.mask_hashes) > 16
    assert disk.metrics["perplexity"] == pytest.approx(memory.metrics["perplexity"], rel=1e-6)
    saved = {k: v for f in (tmp_path / "disk" / "model").glob("*.safetensors") for k, v in load_file(str(f)).items()}
    expected = {
        k: v for f in (tmp_path / "memory" / "model").glob("*.safetensors") for k, v in load_file(str(f)).items()
    }
    assert sorted(saved) == sorted(expected)  # the per-expert checkpoint names, as save_pretrained writes them
    assert any(".experts.3." in k for k in saved)
    for key, tensor in expected.items():
        assert torch.equal(saved[key], tensor), key
    assert torch.isfinite(load(tmp_path / "disk" / "model")(torch.arange(8)[None]).logits).all()


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("offload", ["none", "disk"])
def test_resume_after_an_interruption_gives_the_uninterrupted_result(moe_dirs, tiny_text_file, tmp_path, offload):
    config = values(moe_dirs["mixtral-sharded"], tiny_text_file, pruner="sparsegpt", offload=offload)
    reference = run(build_config({**config, "output": tmp_path / "reference"}))

    class Stop:
        @hookimpl
        def lsaf_after_layer_pruned(self, layer_index: int, masks: Any, report: Any) -> None:
            if layer_index == 1:
                raise _Interrupt

    plugin = Stop()
    registry.plugin_manager().register(plugin, name="stop-after-layer-0")
    try:
        with pytest.raises(_Interrupt):
            run(build_config({**config, "output": tmp_path / "resumed"}))
    finally:
        registry.plugin_manager().unregister(plugin)
    resumed = run(build_config({**config, "output": tmp_path / "resumed", "resume": True}))
    assert resumed.mask_hashes == reference.mask_hashes
    for file in (tmp_path / "reference" / "model").glob("*.safetensors"):
        ours = load_file(str(tmp_path / "resumed" / "model" / file.name))
        for key, tensor in load_file(str(file)).items():
            assert torch.equal(ours[key], tensor), key


def test_cli_expert_allocator_masks_rebuild_the_pruned_moe(moe_dirs, tiny_text_file, tmp_path):
    """``lsaf run --allocator expert --export safetensors,masks`` then ``lsaf apply``: the same weights."""
    from typer.testing import CliRunner

    from lsa_framework.cli import app

    out, rebuilt, model = tmp_path / "out", tmp_path / "rebuilt", str(moe_dirs["qwen2_moe"])
    runner = CliRunner()
    ran = runner.invoke(app, ["run", "--model", model, "--calibration", str(tiny_text_file), "--nsamples", "8",
                              "--seqlen", "64", "--scorer", "dlp", "--allocator", "expert", "--pruner", "wanda",
                              "--sparsity", "0.5", "--eval", "sparsity", "--export", "safetensors,masks",
                              "--output", str(out), "--quiet"], catch_exceptions=False)  # fmt: skip
    assert ran.exit_code == 0, ran.output
    units = {u["name"] for u in json.loads((out / "run.json").read_text())["units"]}
    assert {"layer.1.experts.3", "layer.1.shared_expert", "layer.1.attention"} <= units
    applied = runner.invoke(app, ["apply", str(out / "masks"), "--model", model, "--output", str(rebuilt)])
    assert applied.exit_code == 0, applied.output
    pruned = load_file(str(out / "model" / "model.safetensors"))
    again = load_file(str(rebuilt / "model" / "model.safetensors"))
    assert again.keys() == pruned.keys() and any(".experts.2.up_proj" in k for k in again)
    assert all(torch.equal(again[k], pruned[k]) for k in pruned)


def test_rd_curves_allocate_across_experts(moe_dirs, tiny_text_file, tmp_path):
    """``--scorer rd --allocator expert``: the experts' error curves (from their routed tokens) give them
    different sparsities, the parameter-weighted mean is the target, and the counts in the model match."""
    result = run(build_config(values(moe_dirs["mixtral"], tiny_text_file, scorer="rd", output=tmp_path / "out")))
    sparsity = unit_sparsity(result)
    experts = [s for n, s in sparsity.items() if ".experts." in n]
    assert max(experts) - min(experts) > 0.01
    sizes = {u.name: u.numel for u in result.units}
    assert sum(sparsity[n] * sizes[n] for n in sizes) / sum(sizes.values()) == pytest.approx(0.6, abs=1e-4)
    pruned = load(tmp_path / "out" / "model")
    experts_param = pruned.model.layers[0].mlp.experts.gate_up_proj
    down = pruned.model.layers[0].mlp.experts.down_proj
    for e in range(experts_param.shape[0]):
        zeros = int((experts_param[e] == 0).sum()) + int((down[e] == 0).sum())
        numel = experts_param[e].numel() + down[e].numel()
        assert zeros / numel == pytest.approx(sparsity[f"layer.0.experts.{e}"], abs=2 / numel)

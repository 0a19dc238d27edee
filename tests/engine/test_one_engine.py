"""One engine: ``lsaf bench`` cells are ``lsaf run`` jobs; plugins extend it without touching the core.

* a grid cell and a single run with the same settings give identical masks and metrics, for the
  sequential and basic pipelines and with ``--offload disk``, and fire the same lifecycle hooks;
* a third-party scorer that needs a statistic the framework does not ship registers it in its own
  plugin module, and the engine gathers it (once per input group) like the built-in ones;
* an allocator that declares it ignores scores gets no scoring pass, whatever the scorer.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from lsa_framework import hookimpl, registry
from lsa_framework.bench.grid import GridConfig
from lsa_framework.bench.runner import BenchObserver, run_grid
from lsa_framework.config import build_config
from lsa_framework.engine.pipeline import run
from lsa_framework.types import PluginOptions


class Passes(BenchObserver):
    def __init__(self) -> None:
        self.passes: list[str] = []

    def start_pass(self, name: str, total: int) -> None:
        self.passes.append(name)


@pytest.fixture
def sharded_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(path, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


class HookRecorder:
    """A plugin module recording which lifecycle hooks fired, in order."""

    def __init__(self) -> None:
        self.fired: list[str] = []
        self.module = types.ModuleType("hook_recorder")
        for name in ("lsaf_before_run", "lsaf_after_scoring", "lsaf_after_allocation", "lsaf_after_run"):
            setattr(self.module, name, hookimpl(self._recorder(name)))
        self.module.lsaf_after_layer_pruned = hookimpl(  # type: ignore[attr-defined]
            lambda layer_index, masks, report: self.fired.append("lsaf_after_layer_pruned")
        )

    def _recorder(self, name: str) -> Any:
        if name == "lsaf_before_run":
            return lambda config: self.fired.append(name)
        if name == "lsaf_after_scoring":
            return lambda scores, report: self.fired.append(name)
        if name == "lsaf_after_allocation":
            return lambda sparsities, report: self.fired.append(name)
        return lambda result: self.fired.append(name)


@pytest.mark.parametrize(
    "settings",
    [{"pipeline": "sequential"}, {"pipeline": "basic"}, {"offload": "disk"}],
    ids=["sequential", "basic", "offload"],
)
def test_a_grid_cell_is_an_lsaf_run(settings, tiny_run_values, sharded_model, tmp_path):
    shared = {**{k: v for k, v in tiny_run_values.items() if k != "model"}, **settings}
    grid = GridConfig(models=[str(sharded_model)], scorers=["lse"], allocators=["block"], pruners=["sparsegpt"],
                      sparsities=[0.6], run=shared)  # fmt: skip
    recorder = HookRecorder()
    pm = registry.plugin_manager()
    pm.register(recorder.module, name="hook_recorder")
    try:
        store = run_grid(grid, tmp_path / "bench", Passes())
        in_bench = list(recorder.fired)
        recorder.fired.clear()
        values = {**shared, "model": str(sharded_model), "scorer": "lse", "allocator": "block", "pruner": "sparsegpt"}
        alone = run(build_config({**values, "sparsity": 0.6, "output": tmp_path / "alone"}))
        in_run = list(recorder.fired)
    finally:
        pm.unregister(name="hook_recorder")
    (cell,) = store.records.values()
    assert cell["mask_sha256"] == alone.mask_hashes
    assert cell["metrics"]["perplexity"] == alone.metrics["perplexity"]
    assert cell["metrics"]["sparsity"] == alone.metrics["sparsity"]
    assert [u["sparsity"] for u in cell["units"]] == [u.sparsity for u in alone.units]
    assert in_bench == in_run  # the same five hooks, in the same order, layer by layer
    assert in_run.count("lsaf_after_layer_pruned") == 3 and in_run[0] == "lsaf_before_run"


# --- a statistic the framework does not ship ------------------------------------------------------------


class ChannelMaxAbs:
    """max_t |x_tj| per input channel: what an outlier-aware scorer might need."""

    name: ClassVar[str] = "channel_max_abs"
    instances: ClassVar[list[Any]] = []

    def __init__(self, in_features: int, device: Any) -> None:
        self.value = torch.zeros(in_features, device=device)
        ChannelMaxAbs.instances.append(self)

    def add(self, x: torch.Tensor, batch: int) -> None:
        self.value = torch.maximum(self.value, x.abs().amax(dim=0))

    def result(self, nsamples: int, ntokens: int) -> torch.Tensor:
        return self.value


class OutlierScorer:
    """Scores a unit by its largest input activation times its largest weight."""

    name: ClassVar[str] = "outlier"
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    needs: ClassVar[frozenset[str]] = frozenset({"channel_max_abs"})
    last: ClassVar[Any] = None

    def __init__(self, options: Any = None) -> None:
        self.seen: dict[str, torch.Tensor] = {}
        OutlierScorer.last = self

    def score(self, unit: Any, stats: Any) -> float:
        for info in unit.linears:
            self.seen[info.name] = stats[info.name]["channel_max_abs"]
        return max(float(stats[i.name]["channel_max_abs"].max() * i.weight.detach().abs().max()) for i in unit.linears)

    def finish(self, values: Any, target: float, granularity: str) -> Any:
        from lsa_framework.types import Scores

        return Scores(values=dict(values), higher_is_important=True, spread=0.05)


def _dense_channel_max(model_dir: Path, config: Any) -> dict[str, torch.Tensor]:
    """max |x| per input channel of every linear, from hooks on the dense model's own forward."""
    from transformers import AutoModelForCausalLM

    from lsa_framework.data.windows import sample_windows
    from lsa_framework.engine.plugins import resolve_dataset
    from tests.conftest import make_tokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    documents = resolve_dataset(config).documents("calibration")
    ids = sample_windows(make_tokenizer(), documents, config.nsamples, config.seqlen, config.seed)
    found: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:

            def hook(_m: Any, args: tuple, _name: str = name) -> None:
                x = args[0].reshape(-1, args[0].shape[-1]).abs().amax(dim=0)
                found[_name] = torch.maximum(found[_name], x) if _name in found else x

            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for handle in hooks:
        handle.remove()
    return found


def test_a_third_party_statistic_is_gathered_once_per_input_group(tiny_run_values, tiny_model_dir):
    plugin = types.ModuleType("outlier_plugin")
    plugin.lsaf_register_statistics = hookimpl(lambda register: register(ChannelMaxAbs))  # type: ignore[attr-defined]
    plugin.lsaf_register_scorers = hookimpl(lambda register: register(OutlierScorer))  # type: ignore[attr-defined]
    pm = registry.plugin_manager()
    pm.register(plugin, name="outlier_plugin")
    ChannelMaxAbs.instances.clear()
    config = build_config({**tiny_run_values, "scorer": "outlier", "sparsity": 0.5})
    try:
        result = run(config)
    finally:
        pm.unregister(name="outlier_plugin")
    assert len(ChannelMaxAbs.instances) == 3 * 4  # one accumulator per input group (qkv, o, gate/up, down) per layer
    assert len({round(u.sparsity, 9) for u in result.units}) == 3  # the scores moved the allocation
    seen = OutlierScorer.last.seen
    expected = _dense_channel_max(tiny_model_dir, config)
    assert set(seen) == set(expected)
    for name, value in expected.items():
        assert torch.allclose(seen[name], value, atol=1e-5), name
    assert seen["model.layers.1.self_attn.q_proj"] is seen["model.layers.1.self_attn.v_proj"]  # shared per group


def test_an_allocator_that_ignores_scores_gets_no_scoring_pass(tiny_run_values):
    from lsa_framework.allocators.granularity import LayerAllocator
    from lsa_framework.allocators.mapping import finalize

    class Ramp(LayerAllocator):
        name: ClassVar[str] = "ramp"
        uses_scores: ClassVar[bool] = False

        def allocate(self, scores: Any, sizes: Any, target: float) -> dict[str, float]:
            names = sorted(sizes, key=lambda n: int(n.split(".")[1]))
            return finalize({n: target - 0.1 + 0.1 * i for i, n in enumerate(names)}, sizes, target)

    plugin = types.ModuleType("ramp_plugin")
    plugin.lsaf_register_allocators = hookimpl(lambda register: register(Ramp))  # type: ignore[attr-defined]
    pm = registry.plugin_manager()
    pm.register(plugin, name="ramp_plugin")
    observer = Passes()
    try:
        result = run(build_config({**tiny_run_values, "scorer": "lse", "allocator": "ramp", "sparsity": 0.5}),
                     observer)  # fmt: skip
    finally:
        pm.unregister(name="ramp_plugin")
    assert "scoring" not in observer.passes and observer.passes == ["pruning"]
    assert [round(u.sparsity, 6) for u in result.units] == [0.4, 0.5, 0.6]
    assert result.allocation["scores_used"] is False

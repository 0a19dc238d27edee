"""Statistics gathered where a normalisation module reads a linear's output (``site = "output_norm"``).

The built-in ``output_gain`` must equal Σ_t ‖norm(y_t)‖²/Σ_t ‖y_t‖² computed here with plain hooks on the
model's own forward: on Gemma 2 and 3 the post-attention and post-feedforward norms read what o_proj and
down_proj return, and every linear of the block gets that norm's gain; Llama has no such norm, so every
gain is exactly 1. ``rd`` scales each linear's curve by its gain (so on Llama nothing changes).
"""

from __future__ import annotations

import pytest
import torch

from lsa_framework.engine.layer_calls import capture_activations
from lsa_framework.engine.passes import scoring_pass
from lsa_framework.engine.statistics import statistic_classes
from lsa_framework.model.loading import load_model
from lsa_framework.scorers.rd import RdOptions, RdScorer
from lsa_framework.types import LinearStats, Unit
from tests.architectures import save_tiny_model

NEEDS = frozenset({"output_gain", "residual_energy", "input_sq_norm", "gram"})


def _engine_stats(folder, ids: torch.Tensor) -> tuple[object, dict[int, dict[str, LinearStats]]]:
    loaded = load_model(str(folder), "float32")
    layout = loaded.layout()
    acts = capture_activations(loaded.model, layout.stack, ids, 4, None)  # two batches: 4 + 2 windows
    found: dict[int, dict[str, LinearStats]] = {}
    scoring_pass(layout, acts, NEEDS, lambda i, stats: found.__setitem__(i, stats), classes=statistic_classes(NEEDS))
    return layout, found


def _reference_gains(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Gemma 2/3's sandwich norms, named as the families name them; positions 1.. of every window."""
    outputs: dict[str, torch.Tensor] = {}
    gains: dict[str, float] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        pairs = {"self_attn.o_proj": "post_attention_layernorm", "mlp.down_proj": "post_feedforward_layernorm"}
        for linear, norm in pairs.items():
            key = f"{i}.{linear}"

            def keep(_m, _a, out, key=key):
                outputs[key] = out[:, 1:].double()

            def ratio(_m, _a, out, key=key):
                y, z = outputs[key], out[:, 1:].double()
                gains[key] = float(z.pow(2).sum() / y.pow(2).sum())

            handles.append(layer.get_submodule(linear).register_forward_hook(keep))
            handles.append(layer.get_submodule(norm).register_forward_hook(ratio))
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    return gains


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_output_gain_equals_the_gemma_post_norms_on_the_models_own_forward(family, tmp_path) -> None:
    save_tiny_model(family, tmp_path, num_layers=3)
    ids = torch.randint(2, 150, (6, 24), generator=torch.Generator().manual_seed(0))
    reference = load_model(str(tmp_path), "float32").model
    expected = _reference_gains(reference, ids)
    layout, found = _engine_stats(tmp_path, ids)
    writers = {"attention": "self_attn.o_proj", "mlp": "mlp.down_proj"}
    checked = 0
    for index, linears in enumerate(layout.linears):
        for info in linears:
            gain = float(found[index][info.name].require("output_gain")[0])
            # q/k/v and gate/up: no norm reads the tensor they return (q_norm reads a reshaped view), but
            # their block's output, and so their error, passes through o_proj's or down_proj's norm
            key = f"{index}.{writers[info.block]}"
            assert gain == pytest.approx(expected[key], rel=1e-5), info.name
            assert gain != pytest.approx(1.0, rel=1e-3)  # the norm really rescales
            checked += 1
    assert checked == 7 * layout.num_layers


def test_every_output_gain_of_llama_is_one_and_the_group_statistics_are_kept(tiny_model_dir) -> None:
    ids = torch.randint(2, 150, (6, 24), generator=torch.Generator().manual_seed(0))
    layout, found = _engine_stats(tiny_model_dir, ids)
    for index, linears in enumerate(layout.linears):
        for info in linears:
            stats = found[index][info.name]
            assert float(stats.require("output_gain")[0]) == 1.0
        q, k = (found[index][info.name] for info in linears[:2])
        assert q.gram is k.gram  # one input group, one accumulation, even with per-linear values


def _stats(gain: float, energy: float, weight: torch.Tensor) -> LinearStats:
    x = torch.randn(64, weight.shape[1], generator=torch.Generator().manual_seed(1))
    return LinearStats(
        4,
        64,
        gram=(2 / 4) * x.T @ x,
        input_sq_norm=x.pow(2).sum(0) / 4,
        residual_energy=torch.tensor([energy], dtype=torch.float64),
        output_gain=torch.tensor([gain], dtype=torch.float64),
    )


def test_rd_scales_each_linears_curve_by_its_output_gain() -> None:
    class Info:  # the two attributes rd reads of a LinearInfo
        def __init__(self, name: str, weight: torch.Tensor) -> None:
            self.name, self.weight = name, weight

    weights = [torch.randn(8, 12, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    infos = [Info("layer.0.o", weights[0]), Info("layer.0.down", weights[1])]
    stats = {"layer.0.o": _stats(3.0, 5.0, weights[0]), "layer.0.down": _stats(0.5, 5.0, weights[1])}
    unit = Unit("layer.0", 0, tuple(infos))  # type: ignore[arg-type]
    scorer = RdScorer(RdOptions())
    raw = [scorer.linear_curve(info, stats[info.name]) for info in infos]  # type: ignore[arg-type]
    expected = (3.0 * raw[0] + 0.5 * raw[1]) / 5.0
    assert scorer.score(unit, stats) == pytest.approx(expected.tolist(), rel=1e-12)
    without = RdScorer(RdOptions(output_norms=False)).score(unit, stats)
    assert without == pytest.approx(((raw[0] + raw[1]) / 5.0).tolist(), rel=1e-12)

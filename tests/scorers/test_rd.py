"""``--scorer rd`` end to end on the tiny model: each unit's curve is the summed Wanda-mask error of its
linears divided by the residual energy at its layer's input (checked at the anchors against statistics
gathered here with plain forward hooks), the allocation is the rate–distortion one of those curves, and
the realised sparsity is the target exactly (exact rounding) at every granularity."""

from __future__ import annotations

import json

import pytest
import torch

from lsa_framework.allocators.budget import allocate_rd
from lsa_framework.config import build_config
from lsa_framework.engine.observer import Observer
from lsa_framework.engine.pipeline import run
from lsa_framework.engine.plugins import resolve_plugins
from lsa_framework.engine.session import ScoringJob, Session
from lsa_framework.pruners.masks import wanda_mask
from lsa_framework.scorers.rd import RdOptions
from lsa_framework.types import Pattern


def _hooked_statistics(session: Session) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float]]:
    """Gram (2/n·ΣXᵀX), Wanda's Σx²/n per linear, and the mean ‖h‖² entering each layer (first position
    excluded), from one plain forward of the calibration windows."""
    model, layout, ids = session.model, session.layout, session.input_ids
    assert layout is not None and ids is not None
    inputs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for info in layout.all_linears():
        hook = lambda m, args, name=info.name: inputs.setdefault(name, []).append(args[0].detach())  # noqa: E731
        handles.append(info.module.register_forward_pre_hook(hook))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    n = ids.shape[0]
    grams, norms = {}, {}
    for name, xs in inputs.items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs]).double()
        grams[name], norms[name] = (2.0 / n) * x.T @ x, x.pow(2).sum(0) / n
    energy = [float(h[:, 1:].double().pow(2).sum(-1).mean()) for h in hidden[: layout.num_layers]]
    return grams, norms, energy


@pytest.mark.parametrize("allocator", ["layer", "block", "projection"])
def test_rd_curves_allocation_and_exact_sparsity(allocator: str, tiny_run_values, tmp_path) -> None:
    values = {**tiny_run_values, "scorer": "rd", "allocator": allocator, "sparsity": 0.7, "output": tmp_path / "o"}
    config = build_config(values)
    plugins = resolve_plugins(config)
    session = Session(config, plugins.dataset, Observer())
    session.load()
    session.calibrate()
    assert session.layout is not None
    units = plugins.allocator.units(session.layout)
    scores = session.score([ScoringJob("rd", plugins.scorer, units)])["rd"]

    grams, norms, energy = _hooked_statistics(session)
    options = RdOptions()
    for unit in units:
        curve = scores[unit.name]
        assert isinstance(curve, list) and len(curve) == len(options.levels)
        for anchor in options.anchors:
            direct = 0.0
            for info in unit.linears:
                W = info.weight.detach()
                mask = wanda_mask(W, norms[info.name].float(), anchor, Pattern(), "exact")
                delta = W.double() * mask
                direct += float(torch.trace(delta @ grams[info.name] @ delta.T))
            assert curve[options.levels.index(anchor)] == pytest.approx(direct / energy[unit.layer], rel=1e-4)

    sizes = {u.name: u.numel for u in units}
    expected = allocate_rd({u.name: scores[u.name] for u in units}, sizes, options.levels, 0.7).sparsities
    allocation = session.allocate(plugins.scorer, plugins.allocator, units, scores, config)
    assert allocation.sparsities == pytest.approx(expected, abs=1e-12)
    assert sum(allocation.sparsities[n] * sizes[n] for n in sizes) / sum(sizes.values()) == pytest.approx(0.7, abs=1e-9)

    result = run(config)
    data = json.loads((tmp_path / "o" / "run.json").read_text())
    assert data["allocation"]["pruning"] == {"rounding": "exact"}
    assert {u["name"]: u["sparsity"] for u in data["units"]} == pytest.approx(expected, abs=1e-12)
    total = sum(u.numel for u in result.units)
    realised = sum(u.realised * u.numel for u in result.units if u.realised is not None) / total
    linears = sum(len(u.linears) for u in units)
    assert abs(realised * total - 0.7 * total) <= linears / 2 + 1  # each linear rounds to the nearest weight

"""A fake GQA layout (no model) for allocator and scorer tests: k/v narrower than q, MLP wider."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pluggy
import torch

from lsa_framework import hookspecs
from lsa_framework.types import Block, Layout, LinearInfo

#: projection -> (block, input group, out_features, in_features) in units of (hidden, kv, mlp)
ROLES: dict[str, tuple[Block, str, str, str]] = {
    "q": ("attention", "attn_in", "hidden", "hidden"),
    "k": ("attention", "attn_in", "kv", "hidden"),
    "v": ("attention", "attn_in", "kv", "hidden"),
    "o": ("attention", "o_in", "hidden", "hidden"),
    "gate": ("mlp", "mlp_in", "mlp", "hidden"),
    "up": ("mlp", "mlp_in", "mlp", "hidden"),
    "down": ("mlp", "down_in", "hidden", "mlp"),
}
PARENT = {"attention": "self_attn", "mlp": "mlp"}


def fake_layout(
    num_layers: int = 3,
    hidden: int = 64,
    kv: int = 16,
    mlp: int = 128,
    scales: tuple[float, ...] | None = None,
    seed: int = 0,
) -> Layout:
    """Random weights (layer i scaled by ``scales[i]``); each layer's input groups are its own."""
    dims = {"hidden": hidden, "kv": kv, "mlp": mlp}
    gen = torch.Generator().manual_seed(seed)
    layers, linears = [], []
    for i in range(num_layers):
        layer = torch.nn.Module()
        infos = []
        for proj, (block, group, out_role, in_role) in ROLES.items():
            out_f, in_f = dims[out_role], dims[in_role]
            module = torch.nn.Linear(in_f, out_f, bias=False)
            with torch.no_grad():
                module.weight.copy_(torch.randn(out_f, in_f, generator=gen) * (scales[i] if scales else 1.0))
            layer.add_module(f"{proj}_proj", module)
            infos.append(
                LinearInfo(f"model.layers.{i}.{PARENT[block]}.{proj}_proj", i, block, proj, f"{i}.{group}", module)
            )
        layers.append(layer)
        linears.append(infos)
    return Layout("fake", layers, linears)


def registered_by(module: types.ModuleType, hook: str) -> list[type]:
    """The classes ``module`` registers through registration hook ``hook``, on a fresh manager."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(module)
    found: list[type] = []
    getattr(pm.hook, hook)(register=found.append)
    return found


def quick_run_args(model: Path, text: Path, out: Path) -> list[str]:
    """``lsaf run`` arguments for a fast uniform run on a tiny model, writing to ``out``."""
    return ["run", "--model", str(model), "--calibration", str(text), "--nsamples", "4", "--seqlen", "32",
            "--scorer", "uniform", "--eval", "sparsity", "--output", str(out), "--quiet"]  # fmt: skip


def cli(*args: str) -> Any:
    """Invoke ``lsaf ARGS...`` in-process (exceptions propagate, as a bug should)."""
    from typer.testing import CliRunner

    from lsa_framework.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def one_sentence(output: str) -> str:
    """The CLI's output on one line; it must hold no traceback."""
    assert "Traceback" not in output
    return " ".join(output.split())

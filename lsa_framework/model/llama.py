"""Architecture plugin for the Llama family: Llama, Mistral, Qwen2/3, SmolLM, Gemma and look-alikes.

They share the module names ``model.layers[i].self_attn.{q,k,v,o}_proj`` and
``model.layers[i].mlp.{gate,up,down}_proj``; we recognise them by that structure rather than by a
list of class names, so a new member of the family works without a change here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import Layout, LinearInfo

# (attribute path inside a decoder layer, block, projection, input group)
LLAMA_LINEARS: tuple[tuple[str, str, str, str], ...] = (
    ("self_attn.q_proj", "attention", "q", "attn_in"),
    ("self_attn.k_proj", "attention", "k", "attn_in"),
    ("self_attn.v_proj", "attention", "v", "attn_in"),
    ("self_attn.o_proj", "attention", "o", "attn_out"),
    ("mlp.gate_proj", "mlp", "gate", "mlp_in"),
    ("mlp.up_proj", "mlp", "up", "mlp_in"),
    ("mlp.down_proj", "mlp", "down", "mlp_out"),
)


def _decoder_layers(model: Any) -> Any:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0 else None


class LlamaArchitecture:
    name: ClassVar[str] = "llama"

    def matches(self, model: Any) -> bool:
        layers = _decoder_layers(model)
        return layers is not None and all(
            isinstance(_submodule(layer, path), torch.nn.Linear) for layer in layers for path, *_ in LLAMA_LINEARS
        )

    def layout(self, model: Any) -> Layout:
        layers = _decoder_layers(model)
        linears = [
            [
                LinearInfo(
                    name=f"model.layers.{i}.{path}",
                    layer=i,
                    block=block,  # type: ignore[arg-type]
                    projection=projection,
                    input_group=group,
                    module=layer.get_submodule(path),
                )
                for path, block, projection, group in LLAMA_LINEARS
            ]
            for i, layer in enumerate(layers)
        ]
        return Layout(architecture=self.name, layers=list(layers), linears=linears)


def _submodule(layer: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


@hookimpl
def lsaf_register_architectures(register: Any) -> None:
    register(LlamaArchitecture)

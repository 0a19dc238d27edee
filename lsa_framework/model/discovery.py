"""Where the prunable parts of a causal LM are, found from its module tree and one traced call.

    lsaf run --model ./any-decoder-model    # Llama, Mistral, Qwen2/3, Gemma 2/3, OPT, Phi-3, GPT-NeoX, Falcon, GPT-2,
                                            # and mixtures of experts: Mixtral, Qwen2-MoE, Qwen3-MoE

* **The decoder-layer stack** is the ``nn.ModuleList`` of ``config.num_hidden_layers`` modules that
  hold linears (``model.layers``, ``model.decoder.layers``, ``gpt_neox.layers``, ``transformer.h``, ...).
* **Prunable linears** are the ``nn.Linear`` and transformers ``Conv1D`` modules inside a layer (a
  ``Conv1D`` stores its weight (in, out); :attr:`LinearInfo.weight` transposes it). Routers and gates
  that decide where tokens go are not pruned. Fused projections (Phi-3 ``qkv_proj``) are one linear.
* **Input groups** — linears that read the same tensor (q/k/v, gate/up; Falcon's attention and MLP
  share one LayerNorm output) — come from one call of the layer on a few tokens, with the model's own
  arguments, comparing the input tensors the linears receive. One layer per distinct structure is traced.
* **Blocks**: a linear under a module whose class name contains ``Attention`` is attention, any other
  is MLP (OPT's ``fc1``/``fc2`` hang directly off the layer).
* **Routed experts** stored as fused 3-D parameters (transformers 5) give two matrices per expert, each
  in an input group of its own (:mod:`lsa_framework.model.moe`); fused layouts it does not know are refused.
* **Projection names** are the linear's name without ``_proj`` (``q``, ``down``), or its path inside
  the layer where that is ambiguous (GPT-2's ``attn.c_proj`` and ``mlp.c_proj``).

Architecture plugins (``lsaf_register_architectures``) may then refine the layout for models they
recognise. Encoder-decoder models, state-space models and experts in an unknown fused layout are refused
before any work with one sentence.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import torch

from lsa_framework.errors import UnsupportedArchitectureError
from lsa_framework.model import moe
from lsa_framework.types import Block, Layout, LinearInfo

#: The last name component of linears that route tokens rather than transform them; never pruned.
ROUTER_NAMES = frozenset({"gate", "router", "shared_expert_gate"})
#: Families tested end to end (tests/model/test_architectures.py); used to name the nearest one.
SUPPORTED_FAMILIES = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma2": "Gemma 2",
    "gemma3_text": "Gemma 3",
    "opt": "OPT",
    "phi3": "Phi-3",
    "gpt_neox": "GPT-NeoX",
    "falcon": "Falcon",
    "gpt2": "GPT-2",
    "mixtral": "Mixtral",
    "qwen2_moe": "Qwen2-MoE",
    "qwen3_moe": "Qwen3-MoE",
}
STATE_SPACE_TYPES = ("mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "zamba", "bamba", "lfm2")
TRACE_TOKENS = 8


def _conv1d() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - every supported transformers has it
        return None
    return Conv1D


def _linear_kind(module: torch.nn.Module) -> bool | None:
    """True for a transposed linear (Conv1D), False for an nn.Linear, None for anything else."""
    conv1d = _conv1d()
    if conv1d is not None and isinstance(module, conv1d):
        return True
    if isinstance(module, torch.nn.Linear):
        return False
    return None


def _config(model: Any) -> Any:
    config = getattr(model, "config", None)
    return getattr(config, "text_config", None) or config


def _nearest_family(model: Any) -> str:
    model_type = str(getattr(_config(model), "model_type", "") or type(model).__name__).lower()
    close = difflib.get_close_matches(model_type, list(SUPPORTED_FAMILIES), n=1, cutoff=0.4)
    return SUPPORTED_FAMILIES[close[0]] if close else "Llama"


def _refuse(model: Any, what: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"{type(model).__name__} is {what}, which lsaf does not prune; it prunes decoder-only causal LMs "
        f"(the nearest supported family is {_nearest_family(model)}; see the supported-architectures table)."
    )


def _check_experts(model: Any, stack: torch.nn.ModuleList) -> None:
    """Refuse fused experts whose layout :mod:`lsa_framework.model.moe` does not know (before any work)."""
    for layer in stack:
        for _, experts in moe.experts_modules(layer):
            problem = moe.layout_problem(experts)
            if problem is not None:
                raise _refuse(model, f"a mixture of experts with {problem}")


def _kind_of(config: Any, class_name: str) -> str | None:
    """What unsupported kind of model ``config`` describes, or None."""
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    model_type = str(getattr(config, "model_type", "")).lower()
    if model_type in STATE_SPACE_TYPES or any(t in class_name.lower() for t in ("mamba", "rwkv")):
        return "a state-space model"
    return None


def check_supported(model: Any) -> None:
    """Refuse, before any work, the model classes the engine cannot prune correctly."""
    kind = _kind_of(_config(model), type(model).__name__)
    if kind is not None:
        raise _refuse(model, kind)


def refuse_config(source: str) -> None:
    """Raise the unsupported-architecture sentence when ``source``'s config describes such a model.

    Called when a model failed to load as a causal LM, so the user learns why rather than a loader error.
    """
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source)
    except Exception:
        return
    architectures = getattr(config, "architectures", None) or [type(config).__name__.removesuffix("Config")]
    kind = _kind_of(config, str(architectures[0]))
    if kind is not None:
        stand_in = type(str(architectures[0]), (), {"config": config})()
        raise _refuse(stand_in, kind)


def _linears(layer: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module, bool]]:
    for path, module in layer.named_modules():
        transposed = _linear_kind(module)
        if transposed is None or not path or path.rsplit(".", 1)[-1] in ROUTER_NAMES:
            continue
        yield path, module, transposed


def decoder_stack(model: Any) -> tuple[str, torch.nn.ModuleList]:
    """The path and the ``ModuleList`` of the decoder layers."""
    expected = getattr(_config(model), "num_hidden_layers", None)
    candidates: list[tuple[bool, int, str, torch.nn.ModuleList]] = []
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if not all(any(True for _ in _linears(layer)) for layer in module):
            continue
        size = sum(p.numel() for p in module.parameters())
        candidates.append((len(module) == expected, size, path, module))
    if not candidates:
        raise UnsupportedArchitectureError(
            f"lsaf found no stack of decoder layers with linear weights in {type(model).__name__}; it prunes "
            f"decoder-only causal LMs (the nearest supported family is {_nearest_family(model)}), or register "
            "an architecture plugin for this model."
        )
    _, _, path, stack = max(candidates, key=lambda c: (c[0], c[1]))
    return path, stack


def _block_of(layer: torch.nn.Module, path: str) -> Block:
    """attention when a module between the layer and the linear is an attention module."""
    parts = path.split(".")
    for depth in range(1, len(parts)):
        if "Attention" in type(layer.get_submodule(".".join(parts[:depth]))).__name__:
            return "attention"
    return "mlp"


def _projection_names(paths: list[str]) -> dict[str, str]:
    short = {p: p.rsplit(".", 1)[-1].removesuffix("_proj") for p in paths}
    counts: dict[str, int] = {}
    for name in short.values():
        counts[name] = counts.get(name, 0) + 1
    return {p: (name if counts[name] == 1 else p) for p, name in short.items()}


def _structure(layer: torch.nn.Module) -> tuple[Any, ...]:
    return tuple((path, type(m).__name__, tuple(m.weight.shape)) for path, m, _ in _linears(layer))  # type: ignore[arg-type]


def _input_groups(layer: torch.nn.Module, call: Any, hidden: torch.Tensor) -> dict[str, str]:
    """Linear path → the path of the first linear that read the same input tensor in one call."""
    seen: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # keep inputs alive so that ids stay unique during the call
    group: dict[str, str] = {}
    handles = []
    for path, module, _ in _linears(layer):

        def hook(_module: Any, args: tuple[Any, ...], _path: str = path) -> None:
            x = args[0]
            keep.append(x)
            group[_path] = seen.setdefault(id(x), _path)

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            call(layer, hidden)
    finally:
        for handle in handles:
            handle.remove()
    return group


def discover_layout(model: Any, trace_ids: torch.Tensor | None = None) -> Layout:
    """The generic layout of ``model`` (see the module docstring), refined by matching architecture plugins."""
    from lsa_framework.engine.layer_calls import record_layer_calls

    check_supported(model)
    prefix, stack = decoder_stack(model)
    _check_experts(model, stack)
    if trace_ids is None:
        vocab = int(getattr(_config(model), "vocab_size", 2) or 2)
        trace_ids = (torch.arange(TRACE_TOKENS) % vocab).unsqueeze(0)
    traced = record_layer_calls(model, stack, trace_ids)
    groups_by_structure: dict[tuple[Any, ...], dict[str, str]] = {}
    linears: list[list[LinearInfo]] = []
    for index, layer in enumerate(stack):
        structure = _structure(layer)
        if structure not in groups_by_structure:
            groups_by_structure[structure] = _input_groups(layer, traced.calls[index], traced.hidden)
        groups = groups_by_structure[structure]
        found = list(_linears(layer))
        names = _projection_names([path for path, _, _ in found])
        linears.append(
            [
                LinearInfo(
                    name=f"{prefix}.{index}.{path}",
                    layer=index,
                    block=_block_of(layer, path),
                    projection=names[path],
                    input_group=f"{index}.{groups.get(path, path)}",
                    module=module,
                    transposed=transposed,
                )
                for path, module, transposed in found
            ]
            + moe.expert_linears(layer, prefix, index)
        )
    layout = Layout(architecture="generic", layers=list(stack), linears=linears, stack=stack)
    return _refined(model, layout)


def _refined(model: Any, layout: Layout) -> Layout:
    from lsa_framework import registry

    for entry in registry.collect("architectures").values():
        architecture = entry.cls()
        if architecture.matches(model):
            layout = architecture.refine(model, layout)
    return layout

"""Facts about transformers' decoder families that a generic layer-by-layer engine relies on.

Every family of ``tests.architectures``: the model runs, survives save/reload, its layers' inputs are its
hidden states, its linears are where the discovery rules say, and calling each layer with the arguments the
model itself passed to that layer reproduces the forward. For the families whose layers get different masks
or rotary tables, replaying layer 0's arguments is shown to be wrong (the regression the engine must avoid).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_architectures_zoo.py
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from tests.architectures import EXPECTED, FAMILIES, SLIDING_FAMILIES, tiny_model

torch.set_num_threads(1)

SEQLEN = 64
CACHE_ARGUMENTS = frozenset({"cache", "past_key_values", "past_key_value", "layer_past"})
Call = tuple[tuple[Any, ...], dict[str, Any]]


@pytest.fixture(scope="module")
def input_ids() -> torch.Tensor:
    return torch.randint(0, 190, (2, SEQLEN), generator=torch.Generator().manual_seed(0))


@functools.cache
def shared_model(family: str, attn_implementation: str | None = None) -> Any:
    """One model per family and attention implementation for the tests that only read it (hooks are removed)."""
    return tiny_model(family, attn_implementation=attn_implementation)


def decoder_layers(model: Any, family: str) -> Any:
    return model.get_submodule(EXPECTED[family].layers)


def capture_layer_calls(model: torch.nn.Module, layers: torch.nn.ModuleList, ids: torch.Tensor, **forward: Any):
    """Each layer's (args, kwargs) and output in one forward of the model, plus the model's output."""
    calls: list[Call] = []
    outputs: list[Any] = []

    def before(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args, dict(kwargs)))

    def after(_module: Any, _args: Any, output: Any) -> None:
        outputs.append(output)

    handles = [layer.register_forward_pre_hook(before, with_kwargs=True) for layer in layers]
    handles += [layer.register_forward_hook(after) for layer in layers]
    try:
        with torch.no_grad():
            result = model(ids, **forward)
    finally:
        for handle in handles:
            handle.remove()
    return calls, outputs, result


def hidden_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def without_cache(layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    """The call with caches dropped, whether passed by name or by position (GPT-2 passes the cache 2nd)."""
    bound = inspect.signature(layer.forward).bind_partial(*args, **kwargs)
    names = list(bound.arguments)
    positional = list(args)
    for position, name in enumerate(names[: len(args)]):
        if name in CACHE_ARGUMENTS:
            positional[position] = None
    named = {k: (None if k in CACHE_ARGUMENTS else v) for k, v in kwargs.items()}
    if "use_cache" in named:
        named["use_cache"] = False
    return tuple(positional), named


def call_with(layer: torch.nn.Module, hidden: torch.Tensor, call: Call) -> torch.Tensor:
    args, kwargs = call
    with torch.no_grad():
        return hidden_of(layer(hidden, *args[1:], **kwargs))


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_gives_finite_logits(family: str, input_ids: torch.Tensor) -> None:
    model = shared_model(family)
    with torch.no_grad():
        logits = model(input_ids).logits
    assert logits.shape == (2, SEQLEN, 190)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert not model.training


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(family: str) -> None:
    a, b, c = tiny_model(family, seed=3), tiny_model(family, seed=3), tiny_model(family, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_give_identical_logits(family: str, input_ids: torch.Tensor, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = shared_model(family)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation=model.config._attn_implementation
    ).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, reloaded(input_ids).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_inputs_are_the_hidden_states(family: str, input_ids: torch.Tensor) -> None:
    """hidden_states[i] is the input of layer i; the last one is the final norm of the last layer's output."""
    model = shared_model(family)
    layers = decoder_layers(model, family)
    calls, outputs, result = capture_layer_calls(model, layers, input_ids, output_hidden_states=True)
    hidden_states = result.hidden_states
    assert len(calls) == len(layers) and len(hidden_states) == len(layers) + 1
    for i, (args, kwargs) in enumerate(calls):
        layer_input = args[0] if args else kwargs["hidden_states"]
        assert torch.equal(layer_input, hidden_states[i])
    final_norm = model.get_submodule(EXPECTED[family].final_norm)
    with torch.no_grad():
        normed = final_norm(hidden_of(outputs[-1]))
    assert torch.equal(normed, hidden_states[-1])
    assert not torch.equal(hidden_of(outputs[-1]), hidden_states[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_own_arguments_chain_reproduces_the_forward(family: str, input_ids: torch.Tensor) -> None:
    """Each layer called with its own captured arguments (caches dropped) gives the model's hidden states."""
    model = shared_model(family)
    layers = decoder_layers(model, family)
    calls, outputs, result = capture_layer_calls(model, layers, input_ids, output_hidden_states=True)
    hidden = result.hidden_states[0]
    for i, layer in enumerate(layers):
        hidden = call_with(layer, hidden, without_cache(layer, *calls[i]))
        torch.testing.assert_close(hidden, hidden_of(outputs[i]), atol=1e-6, rtol=1e-5)
    final_norm = model.get_submodule(EXPECTED[family].final_norm)
    with torch.no_grad():
        torch.testing.assert_close(final_norm(hidden), result.hidden_states[-1], atol=1e-6, rtol=1e-5)


def layer_types(model: Any) -> list[str]:
    return list(model.config.layer_types)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "qwen2"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_replaying_layer_zero_arguments_is_wrong(family: str, attn_implementation: str, input_ids) -> None:
    """Layers of another attention type than layer 0 get another mask (and in Gemma 3 other rotary tables)."""
    if family == "gemma2" and attn_implementation == "sdpa":
        pytest.skip("Gemma 2 runs eager only")
    model = shared_model(family, attn_implementation)
    layers = decoder_layers(model, family)
    calls, outputs, _ = capture_layer_calls(model, layers, input_ids, use_cache=False)
    kinds = layer_types(model)
    other = [j for j in range(1, len(layers)) if kinds[j] != kinds[0]]
    same = [j for j in range(1, len(layers)) if kinds[j] == kinds[0]]
    assert other, "the fixture must mix attention types"
    for j in other:
        hidden = calls[j][0][0]
        own = call_with(layers[j], hidden, calls[j])
        replayed = call_with(layers[j], hidden, calls[0])
        torch.testing.assert_close(own, hidden_of(outputs[j]), atol=1e-6, rtol=1e-5)
        assert (own - replayed).abs().max() > 1e-3
    for j in same:  # layers of layer 0's type are unaffected: the bug only shows on mixed stacks
        hidden = calls[j][0][0]
        assert torch.equal(call_with(layers[j], hidden, calls[0]), call_with(layers[j], hidden, calls[j]))


def test_gemma3_local_and_global_layers_get_different_rotary_tables(input_ids: torch.Tensor) -> None:
    model = shared_model("gemma3")
    calls, _, _ = capture_layer_calls(model, decoder_layers(model, "gemma3"), input_ids, use_cache=False)
    kinds = layer_types(model)
    sliding, full = kinds.index("sliding_attention"), kinds.index("full_attention")
    cos_local, _ = calls[sliding][1]["position_embeddings"]
    cos_global, _ = calls[full][1]["position_embeddings"]
    # the rotary tables are cos(position * theta^(-2k/d)) with the two bases of the config
    positions = torch.arange(SEQLEN, dtype=torch.float32)[:, None]
    dim = model.config.head_dim
    for cos, layer_type in ((cos_local, "sliding_attention"), (cos_global, "full_attention")):
        theta = model.config.rope_parameters[layer_type]["rope_theta"]
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        expected = torch.cat([positions * inv_freq] * 2, dim=-1).cos()
        torch.testing.assert_close(cos[0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cos_local, cos_global)


@pytest.mark.parametrize("family", SLIDING_FAMILIES)
def test_sliding_masks_cut_at_the_window(family: str, input_ids: torch.Tensor) -> None:
    """Under eager attention the mask is materialised: sliding layers see exactly the last ``window`` keys."""
    model = shared_model(family, "eager")
    calls, _, _ = capture_layer_calls(model, decoder_layers(model, family), input_ids, use_cache=False)
    window = model.config.sliding_window
    query, key = torch.arange(SEQLEN)[:, None], torch.arange(SEQLEN)[None, :]
    causal = key <= query
    sliding = causal & (query - key < window)
    kinds = getattr(model.config, "layer_types", None) or ["sliding_attention"] * len(calls)
    for (_, kwargs), kind in zip(calls, kinds, strict=True):
        visible = kwargs["attention_mask"][0, 0] == 0  # additive float mask: 0 where attended
        assert torch.equal(visible, sliding if kind == "sliding_attention" else causal)


def test_mistral_layers_share_one_sliding_mask_that_matters(input_ids: torch.Tensor) -> None:
    """Mistral slides in every layer: all layers get the same mask object, and dropping it changes the output."""
    model = shared_model("mistral")
    layers = decoder_layers(model, "mistral")
    calls, _, _ = capture_layer_calls(model, layers, input_ids, use_cache=False)
    masks = [kwargs["attention_mask"] for _, kwargs in calls]
    assert all(mask is masks[0] for mask in masks)
    hidden = calls[1][0][0]
    own = call_with(layers[1], hidden, calls[1])
    assert torch.equal(own, call_with(layers[1], hidden, calls[0]))
    causal_only = (calls[1][0], {**calls[1][1], "attention_mask": None})  # SDPA then applies a plain causal mask
    assert (own - call_with(layers[1], hidden, causal_only)).abs().max() > 1e-3


def linear_modules(layer: torch.nn.Module) -> dict[str, Any]:
    return {name: m for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)}


def attention_or_mlp(layer: torch.nn.Module, name: str) -> str:
    """The generic rule: a linear under a module whose class name contains 'Attention' is attention."""
    parts = name.split(".")
    parents = [type(layer.get_submodule(".".join(parts[:k]))).__name__ for k in range(1, len(parts))]
    return "attention" if any("Attention" in parent for parent in parents) else "mlp"


@pytest.mark.parametrize("family", FAMILIES)
def test_generic_discovery_rules(family: str) -> None:
    model = shared_model(family)
    expected = EXPECTED[family]
    stacks = [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == model.config.num_hidden_layers
    ]
    assert stacks == [expected.layers]
    # two more signals that agree on every family: the gradient-checkpointing marker class and _no_split_modules
    from transformers.modeling_layers import GradientCheckpointingLayer

    marked = [name for name, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer)]
    assert marked == [f"{expected.layers}.{i}" for i in range(model.config.num_hidden_layers)]
    layer = decoder_layers(model, family)[0]
    assert set(model._no_split_modules) == {type(layer).__name__}
    found = linear_modules(layer)
    assert set(found) == set(expected.attention) | set(expected.mlp)
    for name in found:
        assert attention_or_mlp(layer, name) == ("attention" if name in expected.attention else "mlp")


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_orientation(family: str) -> None:
    """nn.Linear (and Falcon's subclass) store (out, in); transformers' Conv1D stores (in, out)."""
    layer = decoder_layers(shared_model(family), family)[0]
    for name, module in linear_modules(layer).items():
        weight = module.weight.T if isinstance(module, Conv1D) else module.weight  # now (out, in)
        x = torch.randn(5, weight.shape[1])
        expected = x @ weight.T + (module.bias if module.bias is not None else 0)
        with torch.no_grad():
            torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5, msg=name)
        assert isinstance(module, Conv1D) == (family == "gpt2")


@pytest.mark.parametrize("family", FAMILIES)
def test_input_groups(family: str, input_ids: torch.Tensor) -> None:
    """Linears that receive the same tensor object; tensors equal by value are never separate objects."""
    model = shared_model(family)
    layer = decoder_layers(model, family)[0]
    inputs: dict[str, torch.Tensor] = {}

    def remember(name: str):
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            inputs.setdefault(name, args[0])

        return hook

    handles = [m.register_forward_pre_hook(remember(n)) for n, m in linear_modules(layer).items()]
    try:
        with torch.no_grad():
            model(input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    by_identity = {frozenset(n for n in inputs if inputs[n] is inputs[m]) for m in inputs}
    by_value = {
        frozenset(n for n in inputs if inputs[n].shape == inputs[m].shape and torch.equal(inputs[n], inputs[m]))
        for m in inputs
    }
    assert by_identity == {frozenset(group) for group in EXPECTED[family].groups}
    assert by_value == by_identity


def test_opt_mlp_reads_flattened_tokens(input_ids: torch.Tensor) -> None:
    """OPT reshapes to (tokens, hidden) before fc1: statistics code must flatten all leading dimensions."""
    model = shared_model("opt")
    layer = decoder_layers(model, "opt")[0]
    shapes: list[torch.Size] = []
    handle = layer.fc1.register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape))
    with torch.no_grad():
        model(input_ids, use_cache=False)
    handle.remove()
    assert shapes == [torch.Size([2 * SEQLEN, model.config.hidden_size])]


def test_falcon_mlp_output_is_modified_in_place(input_ids: torch.Tensor) -> None:
    """Falcon adds the attention output into the MLP's output tensor in place (``mlp_output += attention``).

    A forward hook that keeps the MLP output without cloning it ends up holding MLP + attention.
    """
    model = shared_model("falcon")
    layer = decoder_layers(model, "falcon")[0]
    kept: list[torch.Tensor] = []
    handle = layer.mlp.register_forward_hook(lambda _m, _a, out: kept.extend([out, out.clone()]))
    with torch.no_grad():
        model(input_ids, use_cache=False)
    handle.remove()
    held, snapshot = kept
    assert (held - snapshot).abs().max() > 1e-3


class _Stop(Exception):
    pass


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(same_value, a, b))
    return type(a) is type(b) and (a is b or a == b)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_dry_pass_captures_every_layers_arguments(family: str, input_ids: torch.Tensor) -> None:
    """No layer's arguments depend on an earlier layer's output: with every layer's forward replaced by a
    pass-through and the forward stopped at the last layer's pre-hook, the captured arguments are those of
    the real forward (stopping there matters: Falcon indexes ``output[0]``, which a pass-through breaks)."""
    model = shared_model(family)
    layers = decoder_layers(model, family)
    real, _, _ = capture_layer_calls(model, layers, input_ids, use_cache=False)
    dry: list[Call] = []

    def before(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        dry.append((args, dict(kwargs)))
        if module is layers[-1]:
            raise _Stop

    handles = [layer.register_forward_pre_hook(before, with_kwargs=True) for layer in layers]
    for layer in layers:
        layer.forward = lambda hidden_states, *_args, **_kwargs: hidden_states
    try:
        with torch.no_grad(), pytest.raises(_Stop):
            model(input_ids, use_cache=False)
    finally:
        for layer, handle in zip(layers, handles, strict=True):
            del layer.forward
            handle.remove()
    assert len(dry) == len(real)
    assert torch.equal(dry[0][0][0], real[0][0][0])
    for (real_args, real_kwargs), (dry_args, dry_kwargs) in zip(real, dry, strict=True):
        assert same_value(real_args[1:], dry_args[1:])
        assert real_kwargs.keys() == dry_kwargs.keys()
        assert all(same_value(real_kwargs[k], dry_kwargs[k]) for k in real_kwargs)


RENAMED_ON_DISK = frozenset({"gpt_neox", "mixtral", "qwen2_moe", "qwen3_moe"})


def saved_tensors(model: Any, folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    model.save_pretrained(folder)
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_names_are_module_names_except_where_transformers_converts(family: str, tmp_path: Path) -> None:
    """save_pretrained writes the legacy names of families with a checkpoint conversion mapping (from_pretrained
    converts back): code that reads safetensors by module name (disk offload) must translate for those."""
    model = shared_model(family)
    disk = saved_tensors(model, tmp_path)
    memory = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if family not in RENAMED_ON_DISK:
        assert set(disk) == set(memory) - tied
        assert all(torch.equal(disk[k], memory[k]) for k in disk)
    else:
        assert set(disk) != set(memory) - tied
    if family == "gpt_neox":
        assert torch.equal(disk["embed_out.weight"], memory["lm_head.weight"])

"""Tiny random causal LMs of many decoder families, built in code (nothing is downloaded).

Used by tests that must hold for every architecture the framework claims to support: discovery of the layer
stack and its linears, per-layer argument capture, and MoE routing. Every model has the vocabulary of the
tests' word-level tokenizer (``tests/conftest.py``: 190 ids), a 64-wide residual stream, at most 4 layers and
at least 256 positions, and is float32 in eval mode.

    from tests.architectures import FAMILIES, tiny_model
    model = tiny_model("gemma3", num_layers=3, seed=0)

The configurations deliberately switch on what makes a family differ from Llama: sliding-window layers
(mistral, qwen2, gemma2, gemma3) with a window of 16 < a 64-token sequence, Gemma 3's two rotary tables,
fused projections (phi3, gpt_neox, falcon, gpt2), transformers' ``Conv1D`` (gpt2), parallel attention+MLP
(gpt_neox, falcon), biases (qwen2, opt, gpt_neox, gpt2) and mixtures of experts (mixtral, qwen2_moe with a
shared expert, qwen3_moe with one dense layer and renormalised top-k weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

VOCAB_SIZE = 190  # len(make_tokenizer().get_vocab()) in tests/conftest.py
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 128
MAX_POSITIONS = 256
SLIDING_WINDOW = 16  # smaller than the 64-token sequences the tests use, so the window really cuts

# Gemma 2 cannot run under SDPA (attention-logit soft-capping); every other family defaults to SDPA,
# which is what ``from_pretrained`` picks on CPU for them.
EAGER_ONLY = frozenset({"gemma2"})


def _alternating(num_layers: int, first: str, second: str) -> list[str]:
    return [first if i % 2 == 0 else second for i in range(num_layers)]


def _llama(n: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
    )


def _mistral(n: int) -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=SLIDING_WINDOW,
    )


def _qwen2(n: int) -> Any:
    from transformers import Qwen2Config

    # layer_types is derived from these: layers i >= max_window_layers slide, so layer 0 is full and the rest slide.
    return Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        use_sliding_window=True,
        sliding_window=SLIDING_WINDOW,
        max_window_layers=1,
    )


def _qwen3(n: int) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
    )


def _gemma2(n: int) -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        query_pre_attn_scalar=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=SLIDING_WINDOW,
        layer_types=_alternating(n, "sliding_attention", "full_attention"),
    )


def _gemma3(n: int) -> Any:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        query_pre_attn_scalar=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=SLIDING_WINDOW,
        layer_types=_alternating(n, "sliding_attention", "full_attention"),
    )


def _opt(n: int) -> Any:
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        word_embed_proj_dim=HIDDEN,
        ffn_dim=INTERMEDIATE,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
    )


def _phi3(n: int) -> Any:
    from transformers import Phi3Config

    # Phi-3's default pad/eos id is 32000, outside this vocabulary.
    return Phi3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        original_max_position_embeddings=MAX_POSITIONS,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )


def _gpt_neox(n: int) -> Any:
    from transformers import GPTNeoXConfig

    # Pythia: parallel residual, rotary on a quarter of each head.
    return GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        use_parallel_residual=True,
        bos_token_id=1,
        eos_token_id=1,
    )


def _falcon(n: int) -> Any:
    from transformers import FalconConfig

    # transformers' default Falcon (7B-style): multi-query, one shared LayerNorm, parallel attention+MLP.
    return FalconConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=1,
        eos_token_id=1,
    )


def _falcon_new(n: int) -> Any:
    from transformers import FalconConfig

    # Falcon-40B/180B-style new_decoder_architecture: grouped KV heads, separate ln_attn / ln_mlp.
    return FalconConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_kv_heads=KV_HEADS,
        new_decoder_architecture=True,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=1,
        eos_token_id=1,
    )


def _gpt2(n: int) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=HIDDEN,
        n_inner=INTERMEDIATE,
        n_layer=n,
        n_head=HEADS,
        n_positions=MAX_POSITIONS,
        bos_token_id=1,
        eos_token_id=1,
    )


def _mixtral(n: int) -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=48,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        num_local_experts=4,
        num_experts_per_tok=2,
    )


def _qwen2_moe(n: int) -> Any:
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        moe_intermediate_size=48,
        shared_expert_intermediate_size=96,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=False,
    )


def _qwen3_moe(n: int) -> Any:
    from transformers import Qwen3MoeConfig

    # Layer 1 keeps a dense MLP (mlp_only_layers), so the stack mixes MoE and dense layers.
    return Qwen3MoeConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        moe_intermediate_size=48,
        num_hidden_layers=n,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        mlp_only_layers=[1] if n > 1 else [],
    )


_CONFIGS: dict[str, Callable[[int], Any]] = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "opt": _opt,
    "phi3": _phi3,
    "gpt_neox": _gpt_neox,
    "falcon": _falcon,
    "falcon_new": _falcon_new,
    "gpt2": _gpt2,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
}

FAMILIES: tuple[str, ...] = tuple(_CONFIGS)
MOE_FAMILIES: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe")
SLIDING_FAMILIES: tuple[str, ...] = ("mistral", "qwen2", "gemma2", "gemma3")


def default_attn_implementation(family: str) -> str:
    """SDPA where the family supports it (what a plain ``from_pretrained`` picks on CPU), else eager."""
    return "eager" if family in EAGER_ONLY else "sdpa"


def tiny_config(family: str, num_layers: int = 3, attn_implementation: str | None = None) -> Any:
    """The family's configuration, with the attention implementation set, before any weights exist."""
    if family not in _CONFIGS:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if not 1 <= num_layers <= 4:
        raise ValueError("tiny models have 1 to 4 layers")
    config = _CONFIGS[family](num_layers)
    config._attn_implementation = attn_implementation or default_attn_implementation(family)
    return config


def tiny_model(family: str, num_layers: int = 3, seed: int = 0, attn_implementation: str | None = None) -> Any:
    """A random float32 causal LM of ``family`` in eval mode; the same seed gives the same weights."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, num_layers, attn_implementation)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _perturb_vectors(model)
    return model.eval()


def save_tiny_model(family: str, folder: Any, num_layers: int = 2) -> None:
    """``tiny_model`` saved with the tests' tokenizer, every token id with an embedding row.

    transformers loads a family's own tokenizer class, which may add special tokens (Qwen's
    <|endoftext|>): they get rows, as a real checkpoint has.
    """
    from transformers import AutoTokenizer

    from tests.conftest import make_tokenizer

    model = tiny_model(family, num_layers=num_layers)
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
        model.save_pretrained(folder)


def _perturb_vectors(model: torch.nn.Module) -> None:
    """Give every norm weight and bias (the 1-D parameters) random values.

    Freshly initialised norms are the identity and biases are zero, which would make e.g. GPT-NeoX's two
    LayerNorms produce equal tensors and hide a bias that a pruner drops; trained checkpoints have neither.
    """
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.1)


@dataclass(frozen=True)
class Expected:
    """What generic discovery should find in a family's tiny model, as measured on transformers 5.24.

    Linear names are relative to decoder layer 0. ``groups`` are the linears whose forward receives the same
    input tensor object in one forward pass (the natural statistics groups).
    """

    layers: str
    final_norm: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]


_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_LLAMA_ATTENTION = (*_QKV, "self_attn.o_proj")
_LLAMA_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_LLAMA = Expected(
    layers="model.layers",
    final_norm="model.norm",
    attention=_LLAMA_ATTENTION,
    mlp=_LLAMA_MLP,
    groups=(_QKV, ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)),
)
_MOE_NO_LINEAR_MLP = Expected(
    layers="model.layers",
    final_norm="model.norm",
    attention=_LLAMA_ATTENTION,
    mlp=(),
    groups=(_QKV, ("self_attn.o_proj",)),
)
_FALCON_ATTENTION = ("self_attention.query_key_value", "self_attention.dense")
_FALCON_MLP = ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")

EXPECTED: dict[str, Expected] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma2": _LLAMA,
    "gemma3": _LLAMA,
    "opt": Expected(
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        attention=(*_QKV, "self_attn.out_proj"),
        mlp=("fc1", "fc2"),  # direct children of the decoder layer: no MLP module
        groups=(_QKV, ("self_attn.out_proj",), ("fc1",), ("fc2",)),
    ),
    "phi3": Expected(
        layers="model.layers",
        final_norm="model.norm",
        attention=("self_attn.qkv_proj", "self_attn.o_proj"),
        mlp=("mlp.gate_up_proj", "mlp.down_proj"),
        groups=(("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
    ),
    "gpt_neox": Expected(
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attention=("attention.query_key_value", "attention.dense"),
        mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        groups=(("attention.query_key_value",), ("attention.dense",), ("mlp.dense_h_to_4h",), ("mlp.dense_4h_to_h",)),
    ),
    "falcon": Expected(
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attention=_FALCON_ATTENTION,
        mlp=_FALCON_MLP,
        # one LayerNorm feeds both branches: attention and MLP read the same tensor
        groups=(
            ("self_attention.query_key_value", "mlp.dense_h_to_4h"),
            ("self_attention.dense",),
            ("mlp.dense_4h_to_h",),
        ),
    ),
    "falcon_new": Expected(
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attention=_FALCON_ATTENTION,
        mlp=_FALCON_MLP,
        groups=(
            ("self_attention.query_key_value",),
            ("self_attention.dense",),
            ("mlp.dense_h_to_4h",),
            ("mlp.dense_4h_to_h",),
        ),
    ),
    "gpt2": Expected(
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attention=("attn.c_attn", "attn.c_proj"),
        mlp=("mlp.c_fc", "mlp.c_proj"),
        groups=(("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",)),
    ),
    "mixtral": _MOE_NO_LINEAR_MLP,
    "qwen2_moe": Expected(
        layers="model.layers",
        final_norm="model.norm",
        attention=_LLAMA_ATTENTION,
        mlp=(
            "mlp.shared_expert.gate_proj",
            "mlp.shared_expert.up_proj",
            "mlp.shared_expert.down_proj",
            "mlp.shared_expert_gate",
        ),
        groups=(
            _QKV,
            ("self_attn.o_proj",),
            ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert_gate"),
            ("mlp.shared_expert.down_proj",),
        ),
    ),
    "qwen3_moe": _MOE_NO_LINEAR_MLP,  # layer 1 is dense (mlp_only_layers) and has the Llama MLP linears
}

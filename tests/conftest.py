"""Shared fixtures: a tiny random Llama (GQA, MLP wider than attention) with a word-level tokenizer,
and generated text to calibrate and evaluate on. Everything is built here; nothing is downloaded."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("LSAF_LOAD_PLUGINS", "")  # built-ins only, unless a test registers its own

WORDS = [f"w{i}" for i in range(180)] + ["the", "a", "of", "and", "to", "in", ".", ","]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]")


def make_text(n_docs: int, words_per_doc: int, seed: int) -> list[str]:
    """Documents with some structure (a Markov chain over words) so a model can be less than random."""
    rng = random.Random(seed)
    successors = {w: rng.sample(WORDS, 6) for w in WORDS}
    docs = []
    for _ in range(n_docs):
        word = rng.choice(WORDS)
        out = []
        for _ in range(words_per_doc):
            out.append(word)
            word = rng.choice(successors[word])
        docs.append(" ".join(out))
    return docs


def make_tiny_llama(num_layers: int = 3, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 2,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def train_briefly(model, documents: list[str], steps: int = 120, seqlen: int = 64) -> None:
    """A few Adam steps on the Markov text, so that the model is far better than chance and
    pruning it measurably hurts (a random model's perplexity does not move with sparsity)."""
    tokenizer = make_tokenizer()
    ids = torch.tensor(tokenizer(" ".join(documents), add_special_tokens=False)["input_ids"])
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - seqlen, (8,), generator=generator)
        batch = torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="session", autouse=True)
def private_dense_cache(tmp_path_factory: pytest.TempPathFactory):
    """Dense metrics cached by an earlier test run (older code, the same tiny model) must not answer this
    one's, and the tests must not write into the user's cache: one file for this session only."""
    from lsa_framework.engine.session import _DenseCache

    path = tmp_path_factory.mktemp("dense-cache") / "dense_metrics.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_DenseCache, "_path", staticmethod(lambda: path))
        yield path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_llama()
    train_briefly(model, make_text(20, 400, seed=1))
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(make_text(20, 400, seed=1)) + "\n")
    return path


@pytest.fixture
def tiny_run_values(tiny_model_dir: Path, tiny_text_file: Path) -> dict:
    """RunConfig fields for a fast run on the tiny model."""
    return {
        "model": str(tiny_model_dir),
        "calibration": str(tiny_text_file),
        "nsamples": 8,
        "seqlen": 64,
        "batch_size": 4,
        "eval": ["perplexity", "sparsity"],
        "eval_opts": {"perplexity": {"seqlen": 64}},
    }

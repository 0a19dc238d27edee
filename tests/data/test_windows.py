"""Calibration windows and the evaluation token stream, with a small real tokenizer built offline."""

from __future__ import annotations

import logging
import random
import zlib

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from lsa_framework.data.windows import encode, evaluation_ids, sample_windows
from lsa_framework.errors import BadInputError

WORDS = ["the", "a", "of", "and", "to", "in", "was", "her", "she", "had", "it", "that", "not", "be", "with"]


def make_text(seed: int, words: int) -> str:
    """Random prose-like text: sentences of common words, paragraphs separated by blank lines."""
    rng = random.Random(seed)
    paragraphs = []
    while words > 0:
        n = min(words, rng.randint(20, 60))
        paragraphs.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
        words -= n
    return "\n\n".join(paragraphs)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (the GPT-2/Llama-3 family's scheme) trained here on random text: no network."""
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    model.train_from_iterator([make_text(i, 500) for i in range(5)], trainer=trainer)
    # A small model_max_length: long texts would warn unless the loader silences it.
    return PreTrainedTokenizerFast(tokenizer_object=model, model_max_length=32)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


def ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def contains(haystack: list[int], needle: list[int]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def test_tokenizer_merges_words(tokenizer: PreTrainedTokenizerFast) -> None:
    text = make_text(99, 50)
    assert len(text) / len(ids(tokenizer, text)) > 1  # real merges, not one token per byte
    assert tokenizer.decode(ids(tokenizer, text)) == text


def test_windows_have_shape_and_are_slices_of_documents(tokenizer: PreTrainedTokenizerFast) -> None:
    documents = [make_text(1, 800), make_text(2, 600), make_text(3, 700)]
    windows = sample_windows(tokenizer, documents, nsamples=12, seqlen=64, seed=0)
    assert windows.shape == (12, 64)
    assert windows.dtype == torch.long
    tokenized = [ids(tokenizer, d) for d in documents]
    for window in windows.tolist():
        assert any(contains(doc, window) for doc in tokenized)


def test_windows_are_deterministic_per_seed(tokenizer: PreTrainedTokenizerFast) -> None:
    documents = [make_text(1, 800), make_text(2, 600)]
    a = sample_windows(tokenizer, documents, nsamples=8, seqlen=32, seed=0)
    b = sample_windows(tokenizer, documents, nsamples=8, seqlen=32, seed=0)
    c = sample_windows(tokenizer, documents, nsamples=8, seqlen=32, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_short_documents_are_skipped_when_a_long_one_exists(tokenizer: PreTrainedTokenizerFast) -> None:
    long_doc = make_text(7, 400)
    short_docs = [make_text(100 + i, 5) for i in range(20)]
    documents = [*short_docs[:10], long_doc, *short_docs[10:]]
    seqlen = 48
    assert all(len(ids(tokenizer, d)) <= seqlen for d in short_docs)
    windows = sample_windows(tokenizer, documents, nsamples=10, seqlen=seqlen, seed=3)
    long_ids = ids(tokenizer, long_doc)
    for window in windows.tolist():
        assert contains(long_ids, window)


def test_short_documents_are_concatenated_when_none_is_long_enough(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    documents = [make_text(200 + i, 15) for i in range(30)]
    seqlen = 64
    assert all(len(ids(tokenizer, d)) <= seqlen for d in documents)
    windows = sample_windows(tokenizer, documents, nsamples=6, seqlen=seqlen, seed=0)
    joined = ids(tokenizer, "\n\n".join(documents))
    assert windows.shape == (6, seqlen)
    for window in windows.tolist():
        assert contains(joined, window)
    # Windows cross document boundaries: at least one is in no single document.
    singles = [ids(tokenizer, d) for d in documents]
    assert any(not any(contains(doc, w) for doc in singles) for w in windows.tolist())


def test_too_little_text_is_bad_input(tokenizer: PreTrainedTokenizerFast) -> None:
    documents = ["A short text.", "Another one."]
    with pytest.raises(BadInputError, match=r"only \d+ tokens, fewer than --seqlen 128"):
        sample_windows(tokenizer, documents, nsamples=4, seqlen=128, seed=0)
    with pytest.raises(BadInputError, match="only 0 tokens"):
        sample_windows(tokenizer, [], nsamples=4, seqlen=128, seed=0)


@pytest.mark.parametrize(("nsamples", "seqlen"), [(0, 16), (-1, 16), (4, 0)])
def test_non_positive_sizes_are_bad_input(tokenizer: PreTrainedTokenizerFast, nsamples: int, seqlen: int) -> None:
    with pytest.raises(BadInputError, match="must be positive"):
        sample_windows(tokenizer, [make_text(1, 300)], nsamples=nsamples, seqlen=seqlen, seed=0)


class CountingTokenizer:
    """A tokenizer-like callable without ``verbose``: one id per word, counting the texts it saw."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert add_special_tokens is False
        self.calls.append(text)
        return {"input_ids": [zlib.crc32(w.encode()) & 0x7FFFFFFF for w in text.split()]}


def test_documents_are_tokenized_lazily_and_once() -> None:
    documents = [make_text(i, 100) for i in range(1000)]
    tok = CountingTokenizer()
    windows = sample_windows(tok, documents, nsamples=20, seqlen=50, seed=0)
    assert windows.shape == (20, 50)
    assert len(tok.calls) == len(set(tok.calls)) <= 20  # each drawn document once, the rest never


def test_long_texts_do_not_warn_about_model_length(caplog: pytest.LogCaptureFixture) -> None:
    fresh = build_tokenizer()  # transformers warns once per tokenizer: use one that has not warned yet
    text = make_text(5, 300)
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            assert len(encode(fresh, text)) > fresh.model_max_length
            sample_windows(fresh, [text], nsamples=2, seqlen=40, seed=0)
            evaluation_ids(fresh, [text], None)
            evaluation_ids(fresh, [text], 100)
            assert "sequence length is longer" not in caplog.text
            fresh(text, add_special_tokens=False)  # the control: a plain call does warn
            assert "sequence length is longer" in caplog.text
    finally:
        hf_logging.disable_propagation()


def test_evaluation_ids_are_the_joined_documents(tokenizer: PreTrainedTokenizerFast) -> None:
    documents = [make_text(11, 300), make_text(12, 300)]
    expected = ids(tokenizer, "\n\n".join(documents))
    stream = evaluation_ids(tokenizer, documents, None)
    assert stream.shape == (1, len(expected))
    assert stream.dtype == torch.long
    assert stream[0].tolist() == expected


def test_evaluation_ids_cut_to_max_tokens_match_the_full_tokenization(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    documents = [make_text(13 + i, 3000) for i in range(4)]  # far more text than the first prefix tried
    full = ids(tokenizer, "\n\n".join(documents))
    for max_tokens in (1, 100, 777, len(full), len(full) + 10):
        stream = evaluation_ids(tokenizer, documents, max_tokens)
        assert stream[0].tolist() == full[:max_tokens]


def test_evaluation_prefix_grows_until_enough_tokens() -> None:
    # ~41 characters a token: the first prefix holds too few tokens and must be doubled.
    documents = [" ".join(f"{'x' * 40}{i}" for i in range(5000))]
    expected = CountingTokenizer()(documents[0], add_special_tokens=False)["input_ids"][:300]
    tok = CountingTokenizer()
    stream = evaluation_ids(tok, documents, 300)
    assert stream[0].tolist() == expected
    assert len(tok.calls) > 1
    assert len(tok.calls[-1]) < len(documents[0])  # never needed the whole text


def test_evaluation_ids_of_nothing_and_bad_max_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    assert evaluation_ids(tokenizer, [], None).shape == (1, 0)
    with pytest.raises(BadInputError, match="must be positive"):
        evaluation_ids(tokenizer, ["Some text."], 0)

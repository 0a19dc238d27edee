"""Token windows for calibration and the token stream for perplexity.

Calibration generalises the references' ``get_c4`` (SparseGPT, Wanda): for each sample, pick a
random document with more than ``seqlen`` tokens, then a random window of ``seqlen`` tokens inside
it (start in ``[0, len - seqlen - 1]``, as there). Documents are tokenized lazily, once per call, so
a corpus of many documents (the C4 shard) costs only the documents drawn. When no document is long
enough, the documents joined with blank lines are one long document instead. Everything is drawn from
``random.Random(seed)``: the same documents, tokenizer and seed give the same windows.

Tokenizers are called as ``tokenizer(text, add_special_tokens=False)["input_ids"]``; a Hugging Face
tokenizer is also passed ``verbose=False`` so that long texts do not warn about the model's length.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from lsa_framework.errors import BadInputError

#: Extra tokens tokenized past ``max_tokens`` so that cutting the text does not change the kept tokens.
_MARGIN_TOKENS = 64


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, verbose=False)
    except TypeError:  # a tokenizer-like callable without ``verbose``
        encoded = tokenizer(text, add_special_tokens=False)
    ids = encoded["input_ids"]
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    return list(ids)


def model_context(model: Any) -> int | None:
    """The longest sequence the model was built for (``max_position_embeddings``; GPT-2's ``n_positions``
    answers to the same name), or None when its config does not say."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def fit_seqlen(seqlen: int, context: int | None, explicit: bool, flag: str = "--seqlen") -> tuple[int, str | None]:
    """The sequence length to use, and a notice when it was shortened.

    A length the user asked for that exceeds the model's context is refused: running with fewer
    tokens than asked (and recording the asked value) would misreport the run. The default length
    (the papers' 2048) is shortened to the context instead, with a notice, since the user never chose it.
    """
    if context is None or seqlen <= context:
        return seqlen, None
    if explicit:
        raise BadInputError(
            f"{flag} {seqlen} is longer than the model's context of {context} tokens; pass {flag} {context} or less."
        )
    return context, f"sequence length {seqlen} shortened to the model's context of {context} tokens"


def sample_windows(
    tokenizer: Any, documents: Sequence[str], nsamples: int, seqlen: int, seed: int, bos: int | None = None
) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens of ``documents``, a LongTensor (nsamples, seqlen).

    With ``bos``, each window is that token followed by ``seqlen - 1`` tokens of text (for models that
    need it at the start of every sequence); the text windows are drawn exactly as without it.
    """
    if bos is not None:
        text = sample_windows(tokenizer, documents, nsamples, seqlen - 1, seed)
        return torch.cat([torch.full((text.shape[0], 1), bos, dtype=torch.long), text], dim=1)
    if nsamples <= 0:
        raise BadInputError(f"The number of calibration samples must be positive, not {nsamples}; pass --nsamples 128.")
    if seqlen <= 0:
        raise BadInputError(f"The sequence length must be positive, not {seqlen}; pass --seqlen 2048.")
    rng = random.Random(seed)
    documents = list(documents)
    tokens: dict[int, list[int]] = {}

    def ids_of(index: int) -> list[int]:
        if index not in tokens:
            tokens[index] = encode(tokenizer, documents[index])
        return tokens[index]

    long_enough: list[int] | None = None  # set once every document has been tokenized
    samples: list[list[int]] = []
    for _ in range(nsamples):
        chosen: list[int] | None = None
        misses = 0
        # Rejection sampling draws uniformly among the long-enough documents without tokenizing all of
        # them; after as many misses as there are documents, tokenize the rest and choose among those.
        while long_enough is None and chosen is None:
            ids = ids_of(rng.randrange(len(documents))) if documents else []
            if len(ids) > seqlen:
                chosen = ids
            else:
                misses += 1
                if misses > len(documents):
                    long_enough = [i for i in range(len(documents)) if len(ids_of(i)) > seqlen]
        if chosen is None:
            assert long_enough is not None
            if long_enough:
                chosen = ids_of(rng.choice(long_enough))
            else:
                chosen = _concatenation(tokenizer, documents, seqlen, tokens)
        start = rng.randint(0, len(chosen) - seqlen - 1)
        samples.append(chosen[start : start + seqlen])
    return torch.tensor(samples, dtype=torch.long)


def _concatenation(tokenizer: Any, documents: list[str], seqlen: int, tokens: dict[int, list[int]]) -> list[int]:
    """All documents joined with blank lines, tokenized (cached under key -1)."""
    if -1 not in tokens:
        tokens[-1] = encode(tokenizer, "\n\n".join(documents))
    ids = tokens[-1]
    if len(ids) <= seqlen:
        raise BadInputError(
            f"The calibration text has only {len(ids)} tokens, fewer than --seqlen {seqlen}; "
            "use a shorter --seqlen or more text."
        )
    return ids


def evaluation_ids(tokenizer: Any, documents: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
    """The documents joined with blank lines as one token stream, a LongTensor (1, N), N ≤ ``max_tokens``.

    With ``max_tokens``, only a prefix of the text is tokenized: enough characters for
    ``max_tokens`` plus a margin, doubled until that many tokens come out, so a large evaluation set is
    not tokenized in full for a short evaluation. The kept tokens are those of the whole text.
    """
    if max_tokens is not None and max_tokens <= 0:
        raise BadInputError(f"The number of evaluation tokens must be positive, not {max_tokens}.")
    text = "\n\n".join(documents)
    if max_tokens is None:
        ids = encode(tokenizer, text)
    else:
        chars = max(4096, 8 * (max_tokens + _MARGIN_TOKENS))
        while True:
            ids = encode(tokenizer, text[:chars])
            if chars >= len(text) or len(ids) >= max_tokens + _MARGIN_TOKENS:
                break
            chars *= 2
        ids = ids[:max_tokens]
    return torch.tensor([ids], dtype=torch.long).reshape(1, len(ids))

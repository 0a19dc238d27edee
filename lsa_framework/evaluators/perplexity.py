"""Perplexity on the evaluation text, computed the way the Wanda and SparseGPT scripts do.

    lsaf run --eval perplexity --eval-opt perplexity.max_tokens=16384

The evaluation documents are joined with blank lines and tokenized once; the token stream is cut into
non-overlapping windows of ``seqlen`` (the tail shorter than a window is dropped) and
ppl = exp(Σ_windows mean-NLL · seqlen / (windows · seqlen)). For a model whose layout asks for a
token at the start of every sequence (Gemma's ``<bos>``), each window is that token and ``seqlen − 1``
tokens of text. The windows are evaluated a few at a time, as many as keep their float32 logits under
1 GiB (Gemma's 262k-token vocabulary: one 512-token window at a time).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field

from lsa_framework.data.windows import evaluation_ids, fit_seqlen, model_context
from lsa_framework.errors import BadInputError
from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import EvalContext, PluginOptions


class PerplexityOptions(PluginOptions):
    seqlen: int | None = Field(default=None, gt=0, description="Window length; default: the run's --seqlen.")
    max_tokens: int | None = Field(default=None, gt=0, description="Evaluate on the first N tokens only.")
    batch_size: int = Field(default=4, gt=0)


#: Memory the logits of one evaluation batch may take (float32 logits plus their log-softmax).
LOGITS_BUDGET_BYTES = 1 << 30


def windows_per_batch(seqlen: int, vocab: int, batch_size: int, budget: int = LOGITS_BUDGET_BYTES) -> int:
    """How many windows fit ``budget`` (at least one): the logits of a batch, not the windows, set the peak."""
    per_window = seqlen * vocab * 4 * 2
    if per_window > 4 * budget:
        raise BadInputError(
            f"One perplexity window of {seqlen} tokens over a {vocab}-token vocabulary needs "
            f"{per_window / 2**30:.1f} GiB for its logits; pass a shorter --eval-opt perplexity.seqlen."
        )
    return max(1, min(batch_size, budget // per_window))


def perplexity(model: Any, ids: torch.Tensor, seqlen: int, batch_size: int, bos: int | None = None) -> float:
    """exp of the mean next-token NLL over non-overlapping windows of ``ids`` (shape (1, N)).

    With ``bos`` (a model that needs it at the start of every sequence) each window is that token and
    the next ``seqlen - 1`` tokens of text, so every window still predicts ``seqlen - 1`` tokens.
    """
    text = seqlen - 1 if bos is not None else seqlen
    windows = ids.shape[1] // text
    if windows == 0:
        raise BadInputError(
            f"The evaluation text has {ids.shape[1]} tokens, fewer than one window of {seqlen}; "
            "use a shorter seqlen or more evaluation text."
        )
    vocab = int(getattr(model.config, "vocab_size", 0) or 1)
    batch_size = windows_per_batch(seqlen, vocab, batch_size)
    chunks = ids[0, : windows * text].view(windows, text)
    if bos is not None:
        chunks = torch.cat([torch.full((windows, 1), bos, dtype=torch.long), chunks], dim=1)
    total_nll = 0.0
    with torch.no_grad():
        for start in range(0, windows, batch_size):
            batch = chunks[start : start + batch_size]
            logits = model(input_ids=batch, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
            ).view(batch.shape[0], -1)
            # Each window contributes mean-NLL · seqlen, as in the references.
            total_nll += float(loss.mean(dim=1).sum()) * seqlen
    return math.exp(total_nll / (windows * seqlen))


class PerplexityEvaluator:
    name: ClassVar[str] = "perplexity"
    Options: ClassVar[type[PluginOptions]] = PerplexityOptions
    capabilities: ClassVar[frozenset[str]] = frozenset({"check"})
    headline: ClassVar[str] = "perplexity"
    lower_is_better: ClassVar[bool | None] = True

    def __init__(self, options: PerplexityOptions | None = None) -> None:
        self.options = options or PerplexityOptions()

    def check(self, config: Any) -> None:
        """Refuse, before any pruning, a token budget that cannot hold a single window."""
        window = self.options.seqlen or config.seqlen
        if self.options.max_tokens is not None and self.options.max_tokens < window:
            raise BadInputError(
                f"perplexity.max_tokens={self.options.max_tokens} is less than one window of {window} tokens; "
                f"raise it to at least {window} or set a shorter perplexity.seqlen."
            )

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, float]:
        if self.options.seqlen is not None:
            seqlen, _ = fit_seqlen(self.options.seqlen, model_context(model), True, "perplexity.seqlen")
        else:
            asked = context.seqlen or context.config.seqlen
            seqlen, _ = fit_seqlen(asked, model_context(model), False)
        documents = context.dataset.documents("evaluation")
        ids = evaluation_ids(tokenizer, documents, self.options.max_tokens)
        bos = context.layout.bos_token_id if context.layout is not None else None
        value = perplexity(model, ids, seqlen, self.options.batch_size, bos)
        return {"perplexity": value}


@hookimpl
def lsaf_register_evaluators(register: Any) -> None:
    register(PerplexityEvaluator)

"""Perplexity on the evaluation text, computed the way the Wanda and SparseGPT scripts do.

    lsaf run --eval perplexity --eval-opt perplexity.max_tokens=16384

The evaluation documents are joined with blank lines and tokenized once; the token stream is cut into
non-overlapping windows of ``seqlen`` (the tail shorter than a window is dropped) and
ppl = exp(Σ_windows mean-NLL · seqlen / (windows · seqlen)).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field

from lsa_framework.data.windows import evaluation_ids
from lsa_framework.errors import BadInputError
from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import EvalContext, PluginOptions


class PerplexityOptions(PluginOptions):
    seqlen: int | None = Field(default=None, gt=0, description="Window length; default: the run's --seqlen.")
    max_tokens: int | None = Field(default=None, gt=0, description="Evaluate on the first N tokens only.")
    batch_size: int = Field(default=4, gt=0)


def perplexity(model: Any, ids: torch.Tensor, seqlen: int, batch_size: int) -> float:
    """exp of the mean next-token NLL over non-overlapping windows of ``ids`` (shape (1, N))."""
    windows = ids.shape[1] // seqlen
    if windows == 0:
        raise BadInputError(
            f"The evaluation text has {ids.shape[1]} tokens, fewer than one window of {seqlen}; "
            "use a shorter seqlen or more evaluation text."
        )
    chunks = ids[0, : windows * seqlen].view(windows, seqlen)
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

    def __init__(self, options: PerplexityOptions | None = None) -> None:
        self.options = options or PerplexityOptions()

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, float]:
        seqlen = self.options.seqlen or context.config.seqlen
        documents = context.dataset.documents("evaluation")
        ids = evaluation_ids(tokenizer, documents, self.options.max_tokens)
        value = perplexity(model, ids, seqlen, self.options.batch_size)
        return {"perplexity": value}


@hookimpl
def lsaf_register_evaluators(register: Any) -> None:
    register(PerplexityEvaluator)

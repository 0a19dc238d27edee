"""Built-in architecture plugins: what the module tree cannot tell about a family.

    lsaf run --model gemma3-270m      # every calibration and perplexity window starts with <bos>

Discovery (:mod:`lsa_framework.model.discovery`) finds layers, linears, groups and blocks by itself; an
architecture plugin only refines that layout for the families it ``matches``. Gemma (1, 2 and 3) is
trained with its beginning-of-text token at the start of every sequence and is badly off without it:
on the first 16,384 tokens of *Persuasion*, Gemma 3 270M scores perplexity 109.5 without it and 41.3
with it (SmolLM2, which has no such token in its inputs, 43.90 either way). The Wanda and SparseGPT
scripts give only a document's first window its BOS, which is harmless for Llama but not for Gemma, so
for Gemma the layout asks for BOS at the start of every window.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import Layout

GEMMA_TYPES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})


class GemmaArchitecture:
    """Gemma 1/2/3: every sequence starts with ``<bos>``."""

    name: ClassVar[str] = "gemma"

    def matches(self, model: Any) -> bool:
        config = getattr(model, "config", None)
        return str(getattr(config, "model_type", "")) in GEMMA_TYPES

    def refine(self, model: Any, layout: Layout) -> Layout:
        bos = getattr(model.config, "bos_token_id", None)
        return replace(layout, architecture=f"{layout.architecture}+{self.name}", bos_token_id=bos)


@hookimpl
def lsaf_register_architectures(register: Any) -> None:
    register(GemmaArchitecture)

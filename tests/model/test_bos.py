"""Gemma needs <bos> at the start of every sequence: its layout says so, and windows begin with it."""

from __future__ import annotations

import torch

from lsa_framework.data.windows import sample_windows
from lsa_framework.evaluators.perplexity import perplexity
from lsa_framework.model.discovery import discover_layout
from tests.architectures import tiny_model
from tests.conftest import make_text, make_tokenizer


def test_gemma_layouts_ask_for_bos_and_llama_does_not():
    gemma = tiny_model("gemma3", num_layers=1)
    layout = discover_layout(gemma)
    assert layout.bos_token_id == gemma.config.bos_token_id and layout.architecture == "generic+gemma"
    assert discover_layout(tiny_model("llama", num_layers=1)).bos_token_id is None


def test_windows_with_bos_are_the_same_text_behind_it():
    docs = make_text(5, 300, seed=3)
    plain = sample_windows(make_tokenizer(), docs, 6, 31, seed=2)
    with_bos = sample_windows(make_tokenizer(), docs, 6, 32, seed=2, bos=7)
    assert with_bos.shape == (6, 32) and bool((with_bos[:, 0] == 7).all())
    assert torch.equal(with_bos[:, 1:], plain)


def test_perplexity_with_bos_scores_every_text_token_once():
    model = tiny_model("gemma3", num_layers=1)
    ids = torch.randint(3, 190, (1, 70), generator=torch.Generator().manual_seed(0))
    got = perplexity(model, ids, seqlen=8, batch_size=4, bos=2)
    chunks = ids[0, :70].view(10, 7)  # 70 tokens of text in windows of 7 behind the <bos>
    windows = torch.cat([torch.full((10, 1), 2), chunks], dim=1)
    with torch.no_grad():
        logits = model(input_ids=windows, use_cache=False).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 190), windows[:, 1:].reshape(-1))
    assert abs(got - float(torch.exp(nll))) < 1e-3 * got

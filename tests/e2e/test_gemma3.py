"""The second offline model, Gemma 3 270M (from the chunked GGUF packages), loads and predicts real text."""

from __future__ import annotations

import math

import pytest
import torch

from lsa_framework.data import cache_dir
from lsa_framework.data.builtin import AustenDataset
from lsa_framework.data.windows import evaluation_ids
from lsa_framework.errors import BadInputError
from lsa_framework.model.loading import load_model
from lsa_framework.model.offline import OFFLINE_MODELS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _skip_unless_available() -> None:
    try:
        OFFLINE_MODELS["gemma3-270m"].check_installed()
    except BadInputError as exc:
        if not (cache_dir() / "models" / "gemma3-270m" / "config.json").is_file():
            pytest.skip(f"gemma3-270m is neither converted nor installable here: {exc}")


def test_gemma3_loads_with_its_layers_and_predicts_austen():
    _skip_unless_available()
    loaded = load_model("gemma3-270m")
    model, config = loaded.model, loaded.model.config
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert len(model.model.layers) == config.num_hidden_layers == 18
    # A global-attention layer every 6th, sliding-window attention elsewhere.
    assert [i for i, t in enumerate(config.layer_types) if t == "full_attention"] == [5, 11, 17]

    ids = evaluation_ids(loaded.tokenizer, AustenDataset().documents("evaluation"), 129)
    with torch.no_grad():
        logits = model(input_ids=ids[:, :128], use_cache=False).logits
    assert logits.shape == (1, 128, config.vocab_size)
    assert bool(torch.isfinite(logits).all())
    # Far better than guessing among 262k tokens (ln 262144 = 12.5 nats): the weights were read correctly.
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:128])
    assert float(nll) < 0.6 * math.log(config.vocab_size)

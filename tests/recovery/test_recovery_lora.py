"""LoRA through peft: a plain merge fills the zeros; ours keeps them, trains what it merges, saves,
reloads (merged and unmerged) and resumes bit-identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lsa_framework.errors import BadInputError
from lsa_framework.recovery.lora import (
    MASKS_FILE,
    RECOVERY_FILE,
    LoraOptions,
    MaskedLoraLinear,
    add_masked_lora,
    load_adapter,
    load_masks,
    merge_masked,
    recover_lora,
    save_adapter,
)
from lsa_framework.recovery.masks import MaskChangedError, mask_hashes, masks_from_zeros
from lsa_framework.recovery.training import TrainConfig
from tests.conftest import make_tiny_llama
from tests.recovery.helpers import Killed, kill_at, plain_loss, pruned_linears, pruned_model, windows, zero_sets

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")  # inside peft

CONFIG = TrainConfig(steps=6, lr=1e-2, batch_size=4)


def test_a_plain_lora_merge_makes_pruned_weights_nonzero() -> None:
    """The problem (Wanda #10 and others): W + s·B·A is dense."""
    model = pruned_model()
    zeros = zero_sets(model)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(zeros), init_lora_weights=False)
    merged = get_peft_model(model, config).merge_and_unload()
    after = zero_sets(merged)
    refilled = sum(int((zeros[n] & ~after[n]).sum()) for n in zeros)
    assert refilled > 0.99 * sum(int(z.sum()) for z in zeros.values())


def test_the_merge_is_w_plus_masked_ba() -> None:
    model = pruned_model()
    before = {n: m.weight.detach().clone() for n, m in pruned_linears(model).items()}
    zeros = zero_sets(model)
    peft_model = add_masked_lora(model, options=LoraOptions(r=4, alpha=8))
    with torch.no_grad():  # give B a value, as training would
        for module in peft_model.modules():
            if isinstance(module, MaskedLoraLinear):
                module.lora_B["default"].weight.normal_()
    adapters = {
        n: (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
        for n, m in peft_model.get_base_model().named_modules()
        if isinstance(m, MaskedLoraLinear)
    }
    merged = merge_masked(peft_model, zeros)
    for name, w in before.items():
        a, b = adapters[name]
        expected = w + (b @ a * 2.0) * (w != 0)
        torch.testing.assert_close(merged.get_submodule(name).weight, expected, rtol=0, atol=1e-6)
        assert torch.equal(merged.get_submodule(name).weight == 0, zeros[name]), name


def test_recovery_keeps_masks_and_lowers_the_loss(tmp_path: Path) -> None:
    data = windows()
    model = pruned_model()
    zeros = zero_sets(model)
    loss_before = plain_loss(model, data)
    result = recover_lora(model, data, CONFIG)
    merged = result.model
    assert type(merged).__name__ == "LlamaForCausalLM"
    after = zero_sets(merged)
    for name, zero in zeros.items():
        assert torch.equal(after[name], zero), name
    assert mask_hashes(after) == mask_hashes(zeros) == result.mask_sha256
    assert result.new_zeros == 0
    assert plain_loss(merged, data) < loss_before
    assert result.training.losses[-1] < result.training.losses[0]

    merged.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    for (name, a), b in zip(merged.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_merged_model_computes_what_was_trained() -> None:
    data = windows()
    peft_model = recover_lora(pruned_model(), data, CONFIG, merge=False).model
    with torch.no_grad():
        trained = peft_model(input_ids=data).logits
    merged = merge_masked(peft_model, masks_from_zeros(peft_model.get_base_model()))
    with torch.no_grad():
        assert torch.equal(merged(input_ids=data).logits, trained)  # the same W + (s·B·A) ⊙ K, bit for bit


def test_plain_training_still_merges_sparse() -> None:
    data = windows()
    model = pruned_model()
    zeros = zero_sets(model)
    result = recover_lora(model, data, CONFIG, options=LoraOptions(mask_delta=False, dropout=0.1))
    assert mask_hashes(zero_sets(result.model)) == mask_hashes(zeros)


def test_dropout_needs_the_plain_forward() -> None:
    with pytest.raises(BadInputError, match="dropout"):
        LoraOptions(dropout=0.1)


def test_unmerged_adapter_saves_with_masks_and_loads_back(tmp_path: Path) -> None:
    data = windows()
    zeros = zero_sets(pruned_model())
    peft_model = recover_lora(pruned_model(), data, CONFIG, merge=False).model
    with torch.no_grad():
        trained = peft_model(input_ids=data).logits
    save_adapter(peft_model, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", MASKS_FILE, RECOVERY_FILE} <= files
    assert not list(tmp_path.glob(".adapter*"))  # the temporary folder was renamed away
    saved = load_masks(tmp_path / "adapter")
    assert all(torch.equal(saved[n], zeros[n]) for n in zeros) and saved.keys() == zeros.keys()
    assert json.loads((tmp_path / "adapter" / RECOVERY_FILE).read_text())["mask_sha256"] == mask_hashes(zeros)

    loaded = load_adapter(pruned_model(), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=data).logits, trained, rtol=0, atol=0)
    merged = merge_masked(loaded, saved)
    assert mask_hashes(zero_sets(merged)) == mask_hashes(zeros)

    with pytest.raises(MaskChangedError, match="masks this adapter"):
        load_adapter(make_tiny_llama(num_layers=2, seed=0), tmp_path / "adapter")  # the dense model


def test_resume_after_a_kill_is_bit_identical(tmp_path: Path) -> None:
    data = windows()
    config = CONFIG.model_copy(update={"checkpoint_every": 2})
    straight = recover_lora(pruned_model(), data, config, checkpoint_dir=tmp_path / "a")
    with pytest.raises(Killed):
        recover_lora(pruned_model(), data, config, checkpoint_dir=tmp_path / "b", on_step=kill_at(3))
    resumed = recover_lora(pruned_model(), data, config, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.training.resumed_from == 2
    assert resumed.training.losses == straight.training.losses
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert mask_hashes(zero_sets(resumed.model)) == straight.mask_sha256


def test_gradient_checkpointing_changes_nothing_but_memory() -> None:
    data = windows()
    config = TrainConfig(steps=2, lr=1e-2, batch_size=4)
    plain = recover_lora(pruned_model(), data, config)
    checkpointed = recover_lora(pruned_model(), data, config.model_copy(update={"gradient_checkpointing": True}))
    assert checkpointed.training.losses == plain.training.losses
    for a, b in zip(plain.model.parameters(), checkpointed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not checkpointed.model.is_activation_checkpointing  # switched off again after training

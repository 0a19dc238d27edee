"""Masked full fine-tuning: pruned weights stay exactly zero, the model learns, saves, reloads and resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lsa_framework.recovery.masked import MaskedStep, masked_trainable, recover_masked, trainable_parameters
from lsa_framework.recovery.masks import mask_hashes, masks_from_zeros
from lsa_framework.recovery.training import TrainConfig, train
from tests.recovery.helpers import Killed, kill_at, plain_loss, pruned_model, windows, zero_sets

CONFIG = TrainConfig(steps=6, lr=3e-3, batch_size=4, weight_decay=0.1, warmup_steps=1)


@pytest.mark.parametrize("impl", ["for-loop", "foreach", "fused"])
def test_adamw_alone_keeps_zeros_exactly(impl: str) -> None:
    """Masked gradients and zero moments give a zero update in every AdamW kernel, weight decay and eps included:
    nothing re-zeroes the weights here (enforce=False)."""
    model = pruned_model()
    zeros = zero_sets(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = masks_from_zeros(model)
    config = TrainConfig(steps=3, lr=1e-2, weight_decay=0.5, eps=1e-8, adamw=impl)  # type: ignore[arg-type]
    train(masked_trainable(model, masks, enforce=False), windows(), config)
    params = dict(model.named_parameters())
    for name, zero in zeros.items():
        weight = params[f"{name}.weight"].detach()
        assert int(torch.count_nonzero(weight[zero])) == 0, name
        assert not torch.equal(weight[~zero], before[f"{name}.weight"][~zero]), f"{name} did not train"


def test_masked_gradients_drop_nan_and_inf() -> None:
    model = pruned_model()
    masks = masks_from_zeros(model)
    name = next(iter(masks))
    weight = model.get_submodule(name).weight
    weight.grad = torch.full_like(weight, float("nan")).masked_fill(~masks[name], 1.0)
    weight.grad[masks[name].nonzero()[0].tolist()[0], masks[name].nonzero()[0].tolist()[1]] = float("inf")
    MaskedStep(model, {name: masks[name]}).mask_gradients()
    assert torch.equal(weight.grad, (~masks[name]).float())


def test_default_trains_pruned_linears_and_norms_only() -> None:
    model = pruned_model()
    masks = masks_from_zeros(model)
    chosen, no_decay = trainable_parameters(model, masks, "pruned+norms")
    linears = {f"{n}.weight" for n in masks}
    norms = {n for n, _ in model.named_parameters() if "norm" in n}
    assert set(chosen) == linears | norms
    assert no_decay == norms
    assert set(trainable_parameters(model, masks, "pruned")[0]) == linears
    assert set(trainable_parameters(model, masks, "all")[0]) == {n for n, _ in model.named_parameters()}


def test_recovery_keeps_masks_and_lowers_the_loss(tmp_path: Path) -> None:
    data = windows()
    model = pruned_model()
    zeros = zero_sets(model)
    hashes = mask_hashes(zeros)
    sparsity = sum(int(z.sum()) for z in zeros.values()) / sum(z.numel() for z in zeros.values())
    embed_before = model.get_input_embeddings().weight.detach().clone()
    norm_before = model.model.norm.weight.detach().clone()
    loss_before = plain_loss(model, data)
    result = recover_masked(model, data, CONFIG)

    after = zero_sets(model)
    for name, zero in zeros.items():
        assert torch.equal(after[name], zero), name  # the zeros are exactly those of before: none lost, none new
    assert mask_hashes(after) == hashes == result.mask_sha256
    assert result.sparsity == pytest.approx(sparsity) and result.new_zeros == 0
    assert plain_loss(model, data) < loss_before
    assert result.training.losses[-1] < result.training.losses[0]
    assert torch.equal(model.get_input_embeddings().weight, embed_before)  # frozen by default
    assert not torch.equal(model.model.norm.weight, norm_before)
    assert all(p.requires_grad for p in model.parameters())  # as the fresh model had them

    model.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert mask_hashes(zero_sets(reloaded)) == hashes


def test_resume_after_a_kill_is_bit_identical(tmp_path: Path) -> None:
    data = windows()
    config = CONFIG.model_copy(update={"checkpoint_every": 2})
    straight = pruned_model()
    straight_result = recover_masked(straight, data, config, checkpoint_dir=tmp_path / "a")

    with pytest.raises(Killed):
        recover_masked(pruned_model(), data, config, checkpoint_dir=tmp_path / "b", on_step=kill_at(3))
    resumed = pruned_model()  # a new process: the same pruned model, nothing else carried over
    resumed_result = recover_masked(resumed, data, config, checkpoint_dir=tmp_path / "b", resume=True)

    assert resumed_result.training.resumed_from == 2
    assert resumed_result.training.losses == straight_result.training.losses
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert mask_hashes(zero_sets(resumed)) == mask_hashes(zero_sets(straight)) == straight_result.mask_sha256

"""Masks read back from the zeros, their hashes and the exact-zero check, against plain torch."""

from __future__ import annotations

import hashlib

import pytest
import torch

from lsa_framework.recovery.masks import (
    MaskChangedError,
    check_same_masks,
    check_zeros_kept,
    linear_names,
    mask_hash,
    mask_hashes,
    masks_from_zeros,
    new_zeros,
    realised_sparsity,
)
from tests.recovery.helpers import SPARSITY, pruned_linears, pruned_model


def test_linear_names_are_every_linear_but_the_head() -> None:
    model = pruned_model()
    assert linear_names(model) == list(pruned_linears(model))
    assert len(linear_names(model)) == 2 * 7


def test_masks_are_the_exact_zeros() -> None:
    model = pruned_model()
    masks = masks_from_zeros(model)
    for name, linear in pruned_linears(model).items():
        assert torch.equal(masks[name], linear.weight == 0)
    pruned = sum(int((m.weight == 0).sum()) for m in pruned_linears(model).values())
    total = sum(m.weight.numel() for m in pruned_linears(model).values())
    assert realised_sparsity(masks) == pytest.approx(pruned / total)
    assert abs(realised_sparsity(masks) - SPARSITY) < 0.02


def test_hash_is_sha256_of_the_bool_bytes_and_sees_one_flip() -> None:
    mask = torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) < 0.6
    expected = hashlib.sha256(bytes(mask.flatten().tolist())).hexdigest()[:16]
    assert mask_hash(mask) == expected
    flipped = mask.clone()
    flipped[3, 5] = ~flipped[3, 5]
    assert mask_hash(flipped) != expected
    with pytest.raises(MaskChangedError):
        check_same_masks({"a": mask_hash(mask)}, {"a": mask_hash(flipped)})


def test_zero_check_is_exact_not_approximate() -> None:
    model = pruned_model()
    masks = masks_from_zeros(model)
    check_zeros_kept(model, masks)
    name, linear = next(iter(pruned_linears(model).items()))
    row, col = (linear.weight == 0).nonzero()[0].tolist()
    with torch.no_grad():
        linear.weight[row, col] = 1e-38
    with pytest.raises(MaskChangedError, match=name):
        check_zeros_kept(model, masks)
    assert mask_hashes(masks_from_zeros(model)) != mask_hashes(masks)


def test_new_zeros_counts_kept_weights_that_became_zero() -> None:
    model = pruned_model()
    masks = masks_from_zeros(model)
    linear = next(iter(pruned_linears(model).values()))
    kept = (linear.weight != 0).nonzero()[:3]
    with torch.no_grad():
        linear.weight[kept[:, 0], kept[:, 1]] = 0
    assert new_zeros(model, masks) == 3


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")
def test_linear_names_see_through_peft_adapters() -> None:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = pruned_model()
    names = linear_names(model)
    masks = masks_from_zeros(model)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=names[:3])).get_base_model()  # in place
    assert isinstance(wrapped.get_submodule(names[0]), BaseTunerLayer)
    assert linear_names(wrapped) == names
    after = masks_from_zeros(wrapped)
    assert after.keys() == masks.keys() and all(torch.equal(after[n], masks[n]) for n in names)

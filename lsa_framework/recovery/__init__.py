"""Recovery after pruning: fine-tune a pruned model while every pruned weight stays exactly zero.

    lsaf recover out/wanda-70 --method masked|lora --steps 200 --output out/wanda-70-recovered

Two methods share one training loop (:mod:`.training`): masked full fine-tuning (:mod:`.masked`)
and LoRA adapters whose update is masked by the pruned weights' zeros (:mod:`.lora`, through peft).
The masks are read back from the model (:mod:`.masks`): they are the exact zeros of its pruned linears.
"""

from __future__ import annotations

from lsa_framework.recovery.masks import (
    MaskChangedError,
    check_zeros_kept,
    linear_names,
    mask_hash,
    mask_hashes,
    masks_from_zeros,
    realised_sparsity,
)
from lsa_framework.recovery.training import RecoveryResult, TrainConfig, TrainResult, train

__all__ = [
    "MaskChangedError",
    "RecoveryResult",
    "TrainConfig",
    "TrainResult",
    "check_zeros_kept",
    "linear_names",
    "mask_hash",
    "mask_hashes",
    "masks_from_zeros",
    "realised_sparsity",
    "train",
]

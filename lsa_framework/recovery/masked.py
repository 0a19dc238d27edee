"""Masked full fine-tuning: train the kept weights of the pruned linears; every pruned weight stays 0.

    lsaf recover out/wanda-70 --method masked --steps 200 --lr 5e-5

Why the zeros stay exactly zero under AdamW (decoupled weight decay λ, eps > 0), at a pruned entry:

- the gradient is set to 0 after the last backward of a step (``masked_fill``, so a NaN or inf
  there is removed rather than multiplied by 0, which would keep it);
- the moments m ← β₁m + (1−β₁)g and v ← β₂v + (1−β₂)g² start at 0 and stay 0 (the optimizer is
  fresh, or restored from a checkpoint of this same masked run);
- the weight w ← w·(1 − lr·λ) − lr·m̂/(√v̂ + eps) = 0·(1 − lr·λ) − lr·0/eps = 0. This needs eps > 0
  (0/0 is NaN), which :class:`~.training.TrainConfig` enforces.

The for-loop, foreach and fused AdamW kernels compute these same elementwise formulas; the tests
check all three leave the pruned entries exactly 0 with nothing else helping. On top of that the
pruned entries are written to 0 once more after every step (``enforce=True``, one ``masked_fill_``
per linear): cheap insurance against an optimizer or hook that does not follow the argument.

Which parameters train (``train=``), for users of llm-compressor's sparse fine-tuning
(``ConstantPruningModifier`` + a full fine-tune, masks held fixed) and of SparseGPT recovery:

- ``"pruned+norms"`` (default): the pruned linears (weights and biases) — the damage is there — and
  the norm weights (RMSNorm/LayerNorm, ~0.03% of the parameters), which let each layer rescale the
  activations whose size pruning changed. Embeddings and the output head stay frozen: they are not
  pruned; in SmolLM2-135M they are 21% of the parameters (tied) and their AdamW state costs 12 more
  bytes per parameter; a calibration set of a few hundred windows reaches only some rows, and
  tied weights move the input and output sides at once.
- ``"pruned"``: the pruned linears only.
- ``"all"``: every parameter, as llm-compressor's full fine-tune does (still only the pruned linears
  are masked).

Weight decay (default 0, as in transformers' Trainer) applies to linear weights only, never to
norms or biases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch

from lsa_framework.model.norms import is_norm
from lsa_framework.recovery.masks import (
    check_zeros_kept,
    find_linear,
    mask_hashes,
    masks_from_zeros,
    new_zeros,
    realised_sparsity,
)
from lsa_framework.recovery.training import Evaluate, RecoveryResult, StepCallback, Trainable, TrainConfig, train

TrainSet = Literal["pruned", "pruned+norms", "all"]

#: A learning rate that recovers without undoing the dense model: full fine-tuning moves every kept weight.
DEFAULT_LR = 5e-5


def trainable_parameters(
    model: torch.nn.Module, masks: Mapping[str, torch.Tensor], train_set: TrainSet
) -> tuple[dict[str, torch.nn.Parameter], frozenset[str]]:
    """The parameters that learn under ``train_set``, and those of them without weight decay."""
    chosen: dict[str, torch.nn.Parameter] = {}
    no_decay: set[str] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        pruned = module_name in masks
        norm = is_norm(module)
        wanted = train_set == "all" or pruned or (norm and train_set == "pruned+norms")
        if not wanted:
            continue
        for param_name, param in module.named_parameters(recurse=False):
            name = prefix + param_name
            if any(param is p for p in chosen.values()):
                continue  # a tied weight is trained once
            chosen[name] = param
            if norm or param_name == "bias" or param.dim() < 2:
                no_decay.add(name)
    return chosen, frozenset(no_decay)


class MaskedStep:
    """The two hooks around the optimizer step that keep every pruned weight at exactly zero."""

    def __init__(self, model: torch.nn.Module, masks: Mapping[str, torch.Tensor], *, enforce: bool = True) -> None:
        self.weights = [(find_linear(model, name).weight, mask) for name, mask in masks.items()]
        self.enforce = enforce

    def mask_gradients(self) -> None:
        for weight, mask in self.weights:
            if weight.grad is not None:
                weight.grad.masked_fill_(mask, 0)

    def zero_pruned(self) -> None:
        if self.enforce:
            with torch.no_grad():
                for weight, mask in self.weights:
                    weight.masked_fill_(mask, 0)


def masked_trainable(
    model: torch.nn.Module,
    masks: Mapping[str, torch.Tensor],
    *,
    train_set: TrainSet = "pruned+norms",
    enforce: bool = True,
) -> Trainable:
    """``model`` prepared for masked fine-tuning: only the chosen parameters require gradients."""
    chosen, no_decay = trainable_parameters(model, masks, train_set)
    for param in model.parameters():
        param.requires_grad_(False)
    for param in chosen.values():
        param.requires_grad_(True)
    step = MaskedStep(model, masks, enforce=enforce)
    return Trainable(
        module=model,
        parameters=chosen,
        no_decay=no_decay,
        before_step=step.mask_gradients,
        after_step=step.zero_pruned,
        identity={"method": "masked", "train": train_set, "masks": mask_hashes(masks)},
    )


def recover_masked(
    model: torch.nn.Module,
    windows: torch.Tensor,
    config: TrainConfig,
    *,
    linear_names: Iterable[str] | None = None,
    train_set: TrainSet = "pruned+norms",
    on_step: StepCallback | None = None,
    evaluate: Evaluate | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> RecoveryResult:
    """Fine-tune the pruned ``model`` in place on ``windows``; its zeros (the masks) stay exactly zero.

    The masks are the zeros of ``linear_names`` (default: every linear but the output head) when the
    call starts; the call raises :class:`~.masks.MaskChangedError` if any pruned weight is non-zero at
    the end, and leaves every parameter's ``requires_grad`` as it found it.
    """
    masks = masks_from_zeros(model, linear_names)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        result = train(
            masked_trainable(model, masks, train_set=train_set),
            windows,
            config,
            on_step=on_step,
            evaluate=evaluate,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad[name])
    check_zeros_kept(model, masks)
    return RecoveryResult(
        model=model,
        training=result,
        mask_sha256=mask_hashes(masks),
        sparsity=realised_sparsity(masks_from_zeros(model, masks)),
        new_zeros=new_zeros(model, masks),
    )

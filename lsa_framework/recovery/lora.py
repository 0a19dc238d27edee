"""LoRA recovery that keeps the pruning masks: adapters from ``peft``, the update masked by W's zeros.

    lsaf recover out/wanda-70 --method lora --steps 200 --lr 2e-4 --lora-r 8

Why a plain LoRA merge destroys sparsity: the merged weight is W + s·B·A, and B·A (out × in, rank r)
is dense — almost none of its entries is zero — so every pruned weight W_ij = 0 becomes s·(B·A)_ij.
After training a plain adapter on a 70%-sparse model and merging it, the model is dense again.

What we do instead, with peft's own adapter layers, config, save/load and ``merge_and_unload``:

- The merged weight is W + (s·B·A) ⊙ K, with K the keep mask (True where W ≠ 0). Pruned weights
  stay exactly 0 (0 + 0), kept weights get the full update. :class:`MaskedLoraLinear` is peft's
  ``lora.Linear`` with ``get_delta_weight`` masked, so peft's merge does this by itself.
- Training sees that same masked update (``mask_delta=True``, the default): the forward is
  x·(W + (s·B·A) ⊙ K)ᵀ, so the merged model is exactly the trained one. This costs a dense out × in
  temporary per linear (the same compute as full fine-tuning's forward/backward, with the optimizer
  state of the adapter only). Training the plain adapter (``mask_delta=False``: peft's low-rank
  forward, dropout allowed) and merging it masked discards the part of B·A on the pruned positions
  that training relied on; it is the right choice only for those who serve the adapter *unmerged*
  next to the sparse base (x·Wᵀ + s·x·Aᵀ·Bᵀ, what adapter-serving stacks compute), at the price of
  an effective model that is not sparse.
- :func:`save_adapter` writes the unmerged adapter (peft's files) with the masks (bit-packed) and a
  ``recovery.json`` of their hashes; :func:`load_adapter` refuses a base model whose zeros are not
  those masks, and restores the masked layers.

Defaults: rank 8, alpha 16 (scale s = alpha/r = 2) on every pruned linear, as in the LoRA recovery
of the Wanda paper (which used q/v only); dropout 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file

from lsa_framework.engine.masks import pack, unpack
from lsa_framework.errors import BadInputError
from lsa_framework.recovery.masks import (
    MaskChangedError,
    check_same_masks,
    check_zeros_kept,
    mask_hashes,
    masks_from_zeros,
    new_zeros,
    realised_sparsity,
)
from lsa_framework.recovery.masks import linear_names as default_linear_names
from lsa_framework.recovery.training import Evaluate, RecoveryResult, StepCallback, Trainable, TrainConfig, train

#: The usual LoRA learning rate: adapters start at zero and need a larger step than full fine-tuning.
DEFAULT_LR = 2e-4

MASKS_FILE = "masks.safetensors"
RECOVERY_FILE = "recovery.json"


class LoraOptions(BaseModel):
    """The adapter: rank, scale, dropout and whether training sees the masked update."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="on the adapter's input; only with mask_delta=False")
    mask_delta: bool = Field(default=True, description="train the masked update that gets merged (False: plain LoRA)")

    @model_validator(mode="after")
    def _dropout_needs_plain(self) -> LoraOptions:
        if self.mask_delta and self.dropout:
            raise BadInputError(
                "LoRA dropout needs the plain adapter forward; pass dropout=0 or mask_delta=False "
                "(the masked update is applied to the layer's whole input)."
            )
        return self


class MaskedLoraLinear(PeftLoraLinear):
    """peft's LoRA linear whose update is masked by the zeros its base weight had when wrapped."""

    #: Forward with the masked update (True) or peft's plain low-rank one (False); merging is always masked.
    mask_forward: bool = True

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().__init__(base_layer, adapter_name, **kwargs)
        weight = cast(torch.nn.Linear, self.get_base_layer()).weight
        self.register_buffer("pruning_keep", weight.detach() != 0, persistent=False)

    @property
    def keep(self) -> torch.Tensor:
        """K: True where the base weight was kept (non-zero when wrapped)."""
        return cast(torch.Tensor, self.pruning_keep)

    def _product(self, adapter: str) -> torch.Tensor:
        # s is folded into B (out × r), not applied to the out × in product: one pass fewer.
        lora_a = cast(torch.nn.Linear, self.lora_A[adapter])
        lora_b = cast(torch.nn.Linear, self.lora_B[adapter])
        return (lora_b.weight * self.scaling[adapter]) @ lora_a.weight

    def masked_delta(self, adapter: str) -> torch.Tensor:
        """(s·B·A) ⊙ K for the training forward, differentiable in A and B.

        A multiplication by the bool K: ~3x faster on the CPU than ``masked_fill`` (measured 1.5 ms
        against 4.3 ms for 1536 × 576, one thread), and for finite values bit for bit the merge's
        result (kept: x·1 = x; pruned: 0 + (±0) = +0).
        """
        return self._product(adapter).mul_(self.keep)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """(s·B·A) with the pruned entries set to exactly 0 (``masked_fill``: a NaN there is removed too)."""
        weight = cast(torch.nn.Linear, self.get_base_layer()).weight
        return self._product(adapter).masked_fill_(~self.keep, 0).to(weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged or not self.mask_forward or kwargs.get("adapter_names") is not None:
            return super().forward(x, *args, **kwargs)
        base = cast(torch.nn.Linear, self.get_base_layer())
        weight = base.weight
        for adapter in self.active_adapters:
            if adapter in self.lora_A:
                weight = weight + self.masked_delta(adapter).to(weight.dtype)
        return F.linear(x, weight, base.bias)


def _config(names: list[str], options: LoraOptions) -> LoraConfig:
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        lora_dropout=options.dropout,
        target_modules=names,
        bias="none",
        task_type="CAUSAL_LM",
    )
    config._register_custom_module({torch.nn.Linear: MaskedLoraLinear})
    return config


def _set_forward(model: torch.nn.Module, mask_delta: bool) -> list[MaskedLoraLinear]:
    layers = [m for m in model.modules() if isinstance(m, MaskedLoraLinear)]
    for layer in layers:
        layer.mask_forward = mask_delta
    return layers


def add_masked_lora(
    model: torch.nn.Module,
    names: Iterable[str] | None = None,
    options: LoraOptions | None = None,
    *,
    seed: int = 0,
) -> PeftModel:
    """Wrap ``model`` (in place, as peft does) with masked adapters on the linears ``names``.

    The initial A is drawn under ``seed`` (B starts at 0, so the model is unchanged); the caller's
    global RNG is left as it was.
    """
    options = options or LoraOptions()
    names = default_linear_names(model) if names is None else list(names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, _config(names, options))
    layers = _set_forward(peft_model, options.mask_delta)
    if len(layers) != len(names):
        raise BadInputError(
            f"LoRA wrapped {len(layers)} of the {len(names)} linears asked for; pass exact module names."
        )
    return peft_model


def lora_trainable(peft_model: PeftModel, identity: Mapping[str, Any]) -> Trainable:
    parameters = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    return Trainable(module=peft_model, parameters=parameters, identity=dict(identity))


def merge_masked(peft_model: PeftModel, masks: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """W + (s·B·A) ⊙ K into every wrapped linear, the adapters removed; checks the zeros are kept."""
    merged = peft_model.merge_and_unload()
    check_zeros_kept(merged, masks)
    return merged


def adapter_masks(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The masks of the wrapped linears (the zeros of their base weights), by their names in the base model."""
    base = peft_model.get_base_model()
    names = [name for name, module in base.named_modules() if isinstance(module, MaskedLoraLinear)]
    return masks_from_zeros(base, names)


def save_adapter(peft_model: PeftModel, folder: Path) -> None:
    """Write the unmerged adapter with its masks into the new folder ``folder``: peft's files,
    ``masks.safetensors`` (bit-packed) and ``recovery.json`` (the masks' hashes).

    ``folder`` is a fresh folder inside the output's temporary folder, which appears atomically.
    """
    folder = Path(folder)
    masks = adapter_masks(peft_model)
    peft_model.save_pretrained(str(folder))
    save_file(
        {name: pack(mask) for name, mask in masks.items()},
        str(folder / MASKS_FILE),
        metadata={name: json.dumps(list(mask.shape)) for name, mask in masks.items()},
    )
    layers = [m for m in peft_model.modules() if isinstance(m, MaskedLoraLinear)]
    record = {
        "method": "lora",
        "mask_delta": bool(layers and layers[0].mask_forward),
        "sparsity": realised_sparsity(masks),
        "mask_sha256": mask_hashes(masks),
    }
    (folder / RECOVERY_FILE).write_text(json.dumps(record, indent=1) + "\n")


def load_masks(folder: Path) -> dict[str, torch.Tensor]:
    """The masks saved by :func:`save_adapter` (bool, True = pruned)."""
    from safetensors import safe_open

    path = Path(folder) / MASKS_FILE
    with safe_open(str(path), framework="pt") as handle:
        shapes = {name: json.loads(value) for name, value in (handle.metadata() or {}).items()}
    return {name: unpack(packed, tuple(shapes[name])) for name, packed in load_file(str(path)).items()}


def load_adapter(model: torch.nn.Module, folder: Path, *, is_trainable: bool = False) -> PeftModel:
    """Attach the adapter saved in ``folder`` to the pruned ``model``, whose zeros must be its masks."""
    folder = Path(folder)
    if not (folder / RECOVERY_FILE).is_file():
        raise BadInputError(f"{folder} holds no {RECOVERY_FILE}; pass a folder written by save_adapter.")
    record = json.loads((folder / RECOVERY_FILE).read_text())
    saved = load_masks(folder)
    check_same_masks(record["mask_sha256"], mask_hashes(saved))
    try:
        check_same_masks(record["mask_sha256"], mask_hashes(masks_from_zeros(model, saved)))
    except MaskChangedError as error:
        raise MaskChangedError(
            f"The model's zeros are not the masks this adapter was trained with ({error}); load the pruned model it "
            "was trained on."
        ) from error
    config = LoraConfig.from_pretrained(str(folder))
    config._register_custom_module({torch.nn.Linear: MaskedLoraLinear})
    peft_model = PeftModel.from_pretrained(model, str(folder), config=config, is_trainable=is_trainable)
    _set_forward(peft_model, bool(record["mask_delta"]))
    return peft_model


def recover_lora(
    model: torch.nn.Module,
    windows: torch.Tensor,
    config: TrainConfig,
    *,
    linear_names: Iterable[str] | None = None,
    options: LoraOptions | None = None,
    merge: bool = True,
    on_step: StepCallback | None = None,
    evaluate: Evaluate | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> RecoveryResult:
    """Train masked adapters on the pruned ``model``'s linears; merge them (default) or keep them.

    ``model`` is modified in place (peft wraps it). With ``merge=True`` the result's model is the plain
    merged model (save it with ``save_pretrained``); with ``merge=False`` it is the ``PeftModel``, to
    save with :func:`save_adapter`. The adapter's A is drawn from ``config.seed``.
    """
    options = options or LoraOptions()
    names = default_linear_names(model) if linear_names is None else list(linear_names)
    masks = masks_from_zeros(model, names)
    hashes = mask_hashes(masks)
    peft_model = add_masked_lora(model, names, options, seed=config.seed)
    identity = {"method": "lora", "options": options.model_dump(mode="json"), "masks": hashes}
    result = train(
        lora_trainable(peft_model, identity),
        windows,
        config,
        on_step=on_step,
        evaluate=evaluate,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
    )
    if merge:
        out: torch.nn.Module = merge_masked(peft_model, masks)
        base = out
    else:
        out, base = peft_model, peft_model.get_base_model()
        check_zeros_kept(base, masks)
    return RecoveryResult(
        model=out,
        training=result,
        mask_sha256=hashes,
        sparsity=realised_sparsity(masks_from_zeros(base, names)),
        new_zeros=new_zeros(base, masks),
    )

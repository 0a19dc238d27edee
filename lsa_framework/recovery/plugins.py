"""The built-in recoverers, ``masked`` and ``lora``: plugins of the ``recoverers`` kind.

    lsaf recover out/wanda-70 --method lora --steps 200 --output out/wanda-70-lora
    lsaf run ... --recover masked --recover-opt steps=100 --recover-opt lr=5e-5

A recoverer fine-tunes the pruned model on calibration windows (never the evaluation text) so that
every pruned weight stays exactly zero. Both share the training options of :class:`TrainingOptions`
(the loop of :mod:`lsa_framework.recovery.training`); each adds its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import PluginOptions, RecoveryContext


class TrainingOptions(PluginOptions):
    """What every recoverer's training takes (``--recover-opt KEY=VALUE``)."""

    steps: int = Field(default=100, gt=0, description="optimizer steps")
    batch_size: int = Field(default=4, gt=0, description="calibration windows per micro-batch")
    grad_accum: int = Field(default=1, gt=0, description="micro-batches per optimizer step")
    lr: float | None = Field(default=None, gt=0, description="peak learning rate (default: the method's)")
    schedule: Literal["constant", "linear", "cosine"] = Field(default="cosine", description="learning-rate decay")
    warmup_steps: int = Field(default=0, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW's decoupled weight decay")
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="clip the gradient norm (None: no clipping)")
    autocast: Literal["auto", "off", "bf16"] = Field(
        default="auto", description="bf16 autocast; auto: only where the CPU/GPU computes bf16 natively"
    )
    gradient_checkpointing: bool = Field(default=False, description="recompute activations (less memory)")
    checkpoint_every: int = Field(default=0, ge=0, description="save a resumable checkpoint every N steps")
    seed: int = Field(default=0, description="seed of the data order and the adapter's initialisation")

    def train_config(self, default_lr: float) -> Any:
        from lsa_framework.recovery.training import TrainConfig

        values = self.model_dump(exclude={"lr"}, include=set(TrainConfig.model_fields))
        return TrainConfig(lr=self.lr or default_lr, **values)


class MaskedOptions(TrainingOptions):
    train: Literal["pruned", "pruned+norms", "all"] = Field(
        default="pruned+norms", description="which parameters learn (the pruned linears stay masked)"
    )


class LoraOptions(TrainingOptions):
    r: int = Field(default=8, gt=0, description="adapter rank")
    alpha: float = Field(default=16.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="adapter dropout (only with mask_delta=false)")
    mask_delta: bool = Field(default=True, description="train the masked update that gets merged (false: plain LoRA)")
    merge: bool = Field(
        default=True, description="merge as W + (BA ⊙ M); false: keep the adapter unmerged in adapter/, with masks"
    )


class MaskedRecoverer:
    """Full fine-tuning of the kept weights, gradients and optimizer state masked at every step."""

    name: ClassVar[str] = "masked"
    Options: ClassVar[type[PluginOptions]] = MaskedOptions

    def __init__(self, options: MaskedOptions | None = None) -> None:
        self.options = options if options is not None else MaskedOptions()

    def recover(self, model: Any, context: RecoveryContext) -> Any:
        from lsa_framework.recovery.masked import DEFAULT_LR, recover_masked

        return recover_masked(
            model,
            context.windows,
            self.options.train_config(DEFAULT_LR),
            linear_names=context.linear_names,
            train_set=self.options.train,
            on_step=context.on_step,
            checkpoint_dir=context.checkpoint_dir,
            resume=context.resume,
        )


class LoraRecoverer:
    """LoRA adapters through peft, merged as W + (BA ⊙ M) so every pruned weight stays zero."""

    name: ClassVar[str] = "lora"
    Options: ClassVar[type[PluginOptions]] = LoraOptions
    capabilities: ClassVar[frozenset[str]] = frozenset({"extra_output"})

    def __init__(self, options: LoraOptions | None = None) -> None:
        self.options = options if options is not None else LoraOptions()

    def recover(self, model: Any, context: RecoveryContext) -> Any:
        from lsa_framework.recovery import lora

        o = self.options
        adapter = lora.LoraOptions(r=o.r, alpha=o.alpha, dropout=o.dropout, mask_delta=o.mask_delta)
        return lora.recover_lora(
            model,
            context.windows,
            o.train_config(lora.DEFAULT_LR),
            linear_names=context.linear_names,
            options=adapter,
            merge=o.merge,
            on_step=context.on_step,
            checkpoint_dir=context.checkpoint_dir,
            resume=context.resume,
        )

    def save_extra(self, recovered: Any, folder: Path) -> list[str]:
        """The unmerged adapter with its masks in adapter/, when not merged."""
        if self.options.merge:
            return []
        from lsa_framework.recovery.lora import save_adapter

        save_adapter(recovered.model, folder / "adapter")
        recovered.model.unload()  # model/ then holds the pruned base weights, without the adapter layers
        return ["adapter"]


@hookimpl
def lsaf_register_recoverers(register: Any) -> None:
    register(MaskedRecoverer)
    register(LoraRecoverer)

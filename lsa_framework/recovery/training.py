"""The training loop that both recovery methods share: AdamW on a few steps of token windows.

    lsaf recover out/wanda-70 --method lora --steps 200 --lr 2e-4 --schedule cosine --warmup 10

A method (:mod:`.masked`, :mod:`.lora`) hands :func:`train` a :class:`Trainable`: the module to call,
the parameters that learn, and two hooks around the optimizer step (masked fine-tuning zeroes the
pruned entries of the gradients there). The loop owns everything else:

- Data: the caller's LongTensor of token windows (n, seqlen), usually the calibration windows. Each
  epoch visits them in a fresh random order drawn from ``seed``; micro-batch k of the run always gets
  the same windows, so a resumed run needs only the step count to continue the order.
- Learning rate: linear warmup over ``warmup_steps``, then constant, linear or cosine decay (to zero
  just after the last step), via ``LambdaLR``.
- bf16 autocast (``autocast="auto"``) only where the CPU has native bf16 matrix units (AVX512-BF16 or
  AMX); elsewhere oneDNN emulates bf16: on an AMD EPYC without AVX-512 a 1024x576 @ 576x1536 linear
  under autocast took 8x the float32 time, and a training step of SmolLM2-135M 16-18x. The weights
  and AdamW's state stay fp32 either way.
- Checkpoints every ``checkpoint_every`` steps: one file holding the trainable tensors, the optimizer
  and scheduler state, the RNG state, the losses so far and a fingerprint of everything that decides
  the result. It is written to a temporary name, fsynced and renamed, so a kill at any instant leaves
  the previous checkpoint or the new one. ``resume=True`` restores it into the same freshly prepared
  model and continues; the final weights are bit-identical to an uninterrupted run (same thread count).
- Determinism: the run works inside ``torch.random.fork_rng`` seeded with ``seed``, so it neither
  depends on nor disturbs the caller's global RNG; the evaluation hook runs under its own fork so an
  evaluator that draws random numbers cannot shift the training's dropout masks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from lsa_framework.errors import BadInputError

Schedule = Literal["constant", "linear", "cosine"]
Autocast = Literal["auto", "off", "bf16"]
AdamWImpl = Literal["auto", "for-loop", "foreach", "fused"]

#: ``on_step(step, loss)``: ``step`` counts finished optimizer steps (1 after the first), ``loss`` is
#: the mean training loss of that step's micro-batches, measured before its update.
StepCallback = Callable[[int, float], None]
#: ``evaluate(module) -> metrics``, called in eval mode under ``torch.no_grad`` before and after training.
Evaluate = Callable[[torch.nn.Module], Mapping[str, float]]

CHECKPOINT_FILE = "checkpoint.pt"

#: TrainConfig fields that do not change the computed weights, so a resume may change them.
_NOT_FINGERPRINTED = frozenset({"checkpoint_every"})


class TrainConfig(BaseModel):
    """How to train; every field that changes the result is part of the checkpoint's fingerprint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(gt=0, description="optimizer steps")
    batch_size: int = Field(default=4, gt=0, description="windows per micro-batch")
    grad_accum: int = Field(default=1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(gt=0, description="peak learning rate")
    schedule: Schedule = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0, description="decoupled (AdamW); never on norms or biases")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0, description="must be > 0: 0/eps keeps a zero gradient's update exactly 0")
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="clip the global gradient norm; None: no clipping"
    )
    adamw: AdamWImpl = "auto"
    autocast: Autocast = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = Field(default=0, ge=0, description="0: no checkpoints")


def _nothing() -> None:
    return None


@dataclass
class Trainable:
    """What a recovery method trains, as the loop needs it."""

    module: torch.nn.Module  # called as module(input_ids=batch, labels=batch).loss
    parameters: dict[str, torch.nn.Parameter]  # what learns, and what a checkpoint saves
    no_decay: frozenset[str] = frozenset()  # parameter names without weight decay
    before_step: Callable[[], None] = _nothing  # gradients complete; before clipping and the optimizer step
    after_step: Callable[[], None] = _nothing  # after the optimizer step
    identity: dict[str, Any] = field(default_factory=dict)  # JSON-able; a checkpoint must match it


@dataclass
class TrainResult:
    losses: list[float]  # one per step, including the steps done before a resume
    eval_before: dict[str, float] | None
    eval_after: dict[str, float] | None
    steps: int
    resumed_from: int  # the step the run continued from (0: fresh)
    autocast: str  # "off" or "bf16", as resolved
    seconds: float  # training time of this call, evaluation excluded
    seconds_per_step: float
    peak_rss_mb: float  # of the whole process, so far


@dataclass
class RecoveryResult:
    """What a recovery method returns; its checks passed (else it raised)."""

    model: torch.nn.Module  # the recovered model (masked, merged LoRA) or the PeftModel (unmerged LoRA)
    training: TrainResult
    mask_sha256: dict[str, str]  # the masks held fixed: every weight they prune is exactly 0 after recovery
    sparsity: float  # realised over the masked linears after recovery
    new_zeros: int  # kept weights that training happened to land on exactly 0 (normally 0; they add sparsity)


def resolve_autocast(choice: Autocast, device: torch.device) -> str:
    """``choice`` as ``"bf16"`` or ``"off"``: ``"auto"`` is bf16 only where the hardware computes it natively."""
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    native = [
        getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return "bf16" if device.type == "cpu" and any(native) else "off"


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """The multiplier of ``lr`` at (0-based) step t: warmup to 1, then the schedule's decay."""

    def factor(t: int) -> float:
        if t < config.warmup_steps:
            return (t + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (t - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        if config.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class WindowOrder:
    """Which windows micro-batch k gets: epoch after epoch, each a permutation drawn from ``seed``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.epochs: list[torch.Tensor] = []

    def indices(self, start: int, count: int) -> torch.Tensor:
        out = []
        for i in range(start, start + count):
            epoch, position = divmod(i, self.n)
            while len(self.epochs) <= epoch:
                self.epochs.append(torch.randperm(self.n, generator=self.generator))
            out.append(self.epochs[epoch][position])
        return torch.stack(out)


_ADAMW_FLAGS: dict[str, dict[str, bool]] = {
    "auto": {},
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def _optimizer(target: Trainable, config: TrainConfig) -> torch.optim.AdamW:
    decay = [p for name, p in target.parameters.items() if name not in target.no_decay]
    no_decay = [p for name, p in target.parameters.items() if name in target.no_decay]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    impl = _ADAMW_FLAGS[config.adamw]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=config.eps, **impl
    )


def _fingerprint(target: Trainable, windows: torch.Tensor, config: TrainConfig) -> str:
    digest = hashlib.sha256()
    settings = {k: v for k, v in config.model_dump(mode="json").items() if k not in _NOT_FINGERPRINTED}
    shapes = {name: list(p.shape) for name, p in target.parameters.items()}
    digest.update(json.dumps([settings, target.identity, shapes], sort_keys=True).encode())
    digest.update(windows.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _autocast(mode: str, device: torch.device) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else nullcontext()


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _evaluate(module: torch.nn.Module, evaluate: Evaluate | None) -> dict[str, float] | None:
    if evaluate is None:
        return None
    was_training = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            return {k: float(v) for k, v in evaluate(module).items()}
    finally:
        module.train(was_training)


def _checkpointing(module: torch.nn.Module, *, enable: bool) -> None:
    """Switch transformers' activation (gradient) checkpointing; its name changed in transformers 5."""
    kwargs = {"use_reentrant": False}  # the reentrant variant needs an input that requires grad
    for prefix, key in (
        ("activation_checkpointing", "activation_checkpointing_kwargs"),
        ("gradient_checkpointing", "gradient_checkpointing_kwargs"),
    ):
        switch = getattr(module, f"{prefix}_{'enable' if enable else 'disable'}", None)
        if callable(switch):
            if enable:
                switch(**{key: kwargs})
            else:
                switch()
            return
    raise BadInputError(f"{type(module).__name__} has no activation checkpointing; train without it.")


def _save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    from lsa_framework.storage.atomic import make_folder, write_file

    make_folder(folder)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())

    write_file(folder / CHECKPOINT_FILE, write)


def _load_checkpoint(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)
    if state.get("fingerprint") != fingerprint:
        raise BadInputError(
            f"The checkpoint in {folder} was made with other settings, data or masks; resume with the same "
            "ones, or delete that folder to start over."
        )
    return state


def clear_checkpoint(checkpoint_dir: Path) -> None:
    """Remove the checkpoint once its run's result is safely written."""
    (checkpoint_dir / CHECKPOINT_FILE).unlink(missing_ok=True)


def train(
    target: Trainable,
    windows: torch.Tensor,
    config: TrainConfig,
    *,
    on_step: StepCallback | None = None,
    evaluate: Evaluate | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``target`` on ``windows`` (LongTensor (n, seqlen)) for ``config.steps`` AdamW steps.

    With ``resume=True`` the checkpoint in ``checkpoint_dir`` (if there is one) is restored into
    ``target`` first; ``target`` must be prepared exactly as for the original run.
    """
    if windows.dim() != 2 or windows.dtype != torch.long or windows.shape[0] == 0:
        raise BadInputError(
            f"Training needs a LongTensor of token windows (n, seqlen), not {windows.dtype} {tuple(windows.shape)}."
        )
    if (config.checkpoint_every or resume) and checkpoint_dir is None:
        raise BadInputError("Checkpoints and --resume need a checkpoint folder.")
    module = target.module
    params = list(target.parameters.values())
    if not params:
        raise BadInputError("Nothing to train: no parameter was chosen; check the linear names.")
    device = params[0].device
    mode = resolve_autocast(config.autocast, device)
    fingerprint = _fingerprint(target, windows, config)
    order = WindowOrder(windows.shape[0], config.seed)
    per_step = config.batch_size * config.grad_accum

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        optimizer = _optimizer(target, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
        if not resume and checkpoint_dir is not None and (checkpoint_dir / CHECKPOINT_FILE).is_file():
            raise BadInputError(
                f"An interrupted recovery left a checkpoint in {checkpoint_dir}; pass --resume to continue it, "
                "or delete that folder to start over."
            )
        state = _load_checkpoint(checkpoint_dir, fingerprint) if resume and checkpoint_dir is not None else None
        if state is not None:
            with torch.no_grad():
                for name, p in target.parameters.items():
                    p.copy_(state["params"][name])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            start, losses, eval_before = int(state["step"]), list(state["losses"]), state["eval_before"]
        else:
            start, losses = 0, []
            eval_before = _evaluate(module, evaluate)

        if config.gradient_checkpointing:
            _checkpointing(module, enable=True)
        was_training = module.training
        module.train()
        began = time.perf_counter()
        try:
            for step in range(start, config.steps):
                total = 0.0
                for micro in range(config.grad_accum):
                    index = order.indices((step * config.grad_accum + micro) * config.batch_size, config.batch_size)
                    batch = windows[index].to(device)
                    with _autocast(mode, device):
                        loss = module(input_ids=batch, labels=batch).loss
                    (loss / config.grad_accum).backward()
                    total += float(loss.detach())
                target.before_step()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                target.after_step()
                losses.append(total / config.grad_accum)
                done = step + 1
                if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                    assert checkpoint_dir is not None
                    _save_checkpoint(
                        checkpoint_dir,
                        {
                            "fingerprint": fingerprint,
                            "step": done,
                            "params": {name: p.detach() for name, p in target.parameters.items()},
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "rng": torch.get_rng_state(),
                            "losses": losses,
                            "eval_before": eval_before,
                            "windows_seen": done * per_step,
                        },
                    )
                if on_step is not None:
                    on_step(done, losses[-1])
        finally:
            module.train(was_training)
            if config.gradient_checkpointing:
                _checkpointing(module, enable=False)
        seconds = time.perf_counter() - began
        eval_after = _evaluate(module, evaluate)

    ran = config.steps - start
    return TrainResult(
        losses=losses,
        eval_before=eval_before,
        eval_after=eval_after,
        steps=config.steps,
        resumed_from=start,
        autocast=mode,
        seconds=round(seconds, 3),
        seconds_per_step=round(seconds / ran, 4) if ran else 0.0,
        peak_rss_mb=_peak_rss_mb(),
    )

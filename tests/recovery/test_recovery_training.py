"""The shared training loop: schedules, data order, one step against plain AdamW, checkpoints, callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lsa_framework.errors import BadInputError
from lsa_framework.recovery.training import (
    CHECKPOINT_FILE,
    Trainable,
    TrainConfig,
    WindowOrder,
    lr_factor,
    resolve_autocast,
    train,
)
from tests.recovery.helpers import Killed, kill_at, plain_loss, pruned_model, windows


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _opt() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_match_torch_schedulers(schedule: str) -> None:
    steps = 10
    ours = [lr_factor(TrainConfig(steps=steps, lr=1.0, schedule=schedule))(t) for t in range(steps)]  # type: ignore[arg-type]
    if schedule == "constant":
        theirs = [1.0] * steps
    elif schedule == "linear":
        theirs = _lrs(torch.optim.lr_scheduler.LinearLR(_opt(), 1.0, 0.0, total_iters=steps), steps)
    else:
        theirs = _lrs(torch.optim.lr_scheduler.CosineAnnealingLR(_opt(), T_max=steps), steps)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_warmup_rises_linearly_then_decays() -> None:
    factor = lr_factor(TrainConfig(steps=12, lr=1.0, warmup_steps=4, schedule="linear"))
    assert [factor(t) for t in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [factor(t) for t in range(4, 12)] == pytest.approx([1 - i / 8 for i in range(8)])


def test_window_order_is_a_permutation_per_epoch_and_reproducible() -> None:
    order = WindowOrder(5, seed=3)
    stream = order.indices(0, 15)
    for epoch in range(3):
        assert sorted(stream[epoch * 5 : epoch * 5 + 5].tolist()) == list(range(5))
    again = WindowOrder(5, seed=3)
    assert torch.equal(torch.cat([again.indices(i, 1) for i in range(15)]), stream)
    assert not torch.equal(WindowOrder(5, seed=4).indices(0, 15), stream)


def test_auto_autocast_follows_the_cpu_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text().split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert resolve_autocast("auto", torch.device("cpu")) == ("bf16" if native else "off")
    assert resolve_autocast("bf16", torch.device("cpu")) == "bf16"


def _whole_model(model: torch.nn.Module) -> Trainable:
    return Trainable(module=model, parameters=dict(model.named_parameters()))


def test_one_step_is_one_plain_adamw_step_on_the_first_batch() -> None:
    data = windows()
    # float32, like the reference: on a CPU with native bf16 (AVX512-BF16/AMX) "auto" would autocast
    config = TrainConfig(steps=1, lr=1e-3, batch_size=4, weight_decay=0.1, max_grad_norm=None, seed=5, autocast="off")
    ours = pruned_model()
    train(_whole_model(ours), data, config)

    reference = pruned_model()
    batch = data[WindowOrder(data.shape[0], seed=5).indices(0, 4)]
    logits = reference(input_ids=batch).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.1)
    loss.backward()
    optimizer.step()
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_accumulation_averages_micro_batches() -> None:
    """Two micro-batches of 2 give the gradient of one batch of 4 (up to float summation order)."""
    data = windows()
    one, two = pruned_model(), pruned_model()
    base = {"steps": 2, "lr": 1e-3, "max_grad_norm": None, "seed": 1, "autocast": "off"}  # summation order only
    train(_whole_model(one), data, TrainConfig(batch_size=4, **base))
    train(_whole_model(two), data, TrainConfig(batch_size=2, grad_accum=2, **base))
    for a, b in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_callbacks_and_evaluation_hook() -> None:
    data = windows()
    seen: list[tuple[int, float]] = []
    model = pruned_model()
    before = plain_loss(model, data)
    result = train(
        _whole_model(model),
        data,
        TrainConfig(steps=3, lr=1e-3),
        on_step=lambda step, loss: seen.append((step, loss)),
        evaluate=lambda m: {"loss": plain_loss(m, data), "training": float(m.training)},
    )
    assert [s for s, _ in seen] == [1, 2, 3]
    assert [loss for _, loss in seen] == result.losses
    assert result.eval_before == {"loss": pytest.approx(before), "training": 0.0}
    assert result.eval_after == {"loss": pytest.approx(plain_loss(model, data)), "training": 0.0}


def test_the_caller_rng_is_left_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(_whole_model(pruned_model()), windows(), TrainConfig(steps=1, lr=1e-3))
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_is_renamed_into_place_and_guards_its_settings(tmp_path: Path) -> None:
    data = windows()
    config = TrainConfig(steps=4, lr=1e-3, checkpoint_every=1)
    with pytest.raises(Killed):
        train(_whole_model(pruned_model()), data, config, checkpoint_dir=tmp_path, on_step=kill_at(2))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["step"] == 2
    with pytest.raises(BadInputError, match="resume"):
        train(_whole_model(pruned_model()), data, config, checkpoint_dir=tmp_path)
    with pytest.raises(BadInputError, match="other settings"):
        other = TrainConfig(steps=4, lr=2e-3, checkpoint_every=1)
        train(_whole_model(pruned_model()), data, other, checkpoint_dir=tmp_path, resume=True)
    result = train(_whole_model(pruned_model()), data, config, checkpoint_dir=tmp_path, resume=True)
    assert result.resumed_from == 2 and len(result.losses) == 4


def test_bf16_autocast_trains_fp32_weights() -> None:
    model = pruned_model()
    result = train(_whole_model(model), windows(), TrainConfig(steps=1, lr=1e-3, batch_size=2, autocast="bf16"))
    assert result.autocast == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(result.losses)).all()


def test_windows_must_be_token_ids() -> None:
    with pytest.raises(BadInputError, match="LongTensor"):
        train(_whole_model(pruned_model()), windows().float(), TrainConfig(steps=1, lr=1e-3))

"""The magnitude, Wanda and SparseGPT pruner plugins, driven through their ``prune`` method."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
import torch

from lsa_framework.pruners import magnitude, sparsegpt, wanda
from lsa_framework.pruners.magnitude import MagnitudePruner
from lsa_framework.pruners.sparsegpt import SparseGPTPruner
from lsa_framework.pruners.wanda import WandaPruner
from lsa_framework.types import LinearStats, Pattern, Pruner

IN, OUT, TOKENS = 64, 32, 256


def _setup(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, LinearStats]:
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(IN, OUT, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(OUT, IN, generator=g))
    z = torch.randn(TOKENS, IN, generator=g)
    mix = torch.randn(IN, IN, generator=g) / IN**0.5
    x = (z @ mix + 0.3 * z) * (torch.rand(IN, generator=g) * 3 + 0.1)
    stats = LinearStats(nsamples=1, ntokens=TOKENS, input_sq_norm=(x**2).sum(0), gram=2 * x.T @ x / TOKENS)
    return linear, x, stats


@pytest.mark.parametrize(
    ("module", "cls", "name", "needs"),
    [
        (magnitude, MagnitudePruner, "magnitude", frozenset()),
        (wanda, WandaPruner, "wanda", frozenset({"input_sq_norm"})),
        (sparsegpt, SparseGPTPruner, "sparsegpt", frozenset({"gram"})),
    ],
)
def test_registration_and_protocol(module: Any, cls: Any, name: str, needs: frozenset[str]) -> None:
    registered: list[Any] = []
    module.lsaf_register_pruners(registered.append)
    assert registered == [cls]
    assert cls.name == name
    assert cls.needs == needs
    pruner = cls(cls.Options())
    assert isinstance(pruner, Pruner)
    assert isinstance(cls().options, cls.Options)
    with pytest.raises(pydantic.ValidationError):
        cls.Options(no_such_option=1)


def test_sparsegpt_options() -> None:
    opts = SparseGPTPruner.Options()
    assert (opts.blocksize, opts.percdamp) == (128, 0.01)
    with pytest.raises(pydantic.ValidationError):
        SparseGPTPruner.Options(blocksize=0)
    with pytest.raises(pydantic.ValidationError):
        SparseGPTPruner.Options(percdamp=-0.1)


def test_wanda_plugin_zeroes_exactly_its_mask() -> None:
    linear, _, stats = _setup(1)
    w0 = linear.weight.detach().clone()
    assert stats.input_sq_norm is not None
    score = w0.abs() * stats.input_sq_norm.sqrt()
    expected = torch.zeros_like(w0, dtype=torch.bool)
    expected.scatter_(1, score.argsort(dim=1)[:, : IN // 2], True)

    mask = WandaPruner().prune(linear, stats, 0.5, Pattern())
    assert torch.equal(mask, expected)
    assert torch.equal(linear.weight.detach(), w0.masked_fill(expected, 0))


def test_magnitude_plugin_zeroes_exactly_its_mask() -> None:
    linear, _, _ = _setup(2)
    w0 = linear.weight.detach().clone()
    mask = MagnitudePruner().prune(linear, LinearStats(nsamples=0, ntokens=0), 0.6, Pattern())
    assert int(mask.sum()) == int(w0.numel() * 0.6)
    assert w0.abs()[mask].max() <= w0.abs()[~mask].min()
    assert torch.equal(linear.weight.detach(), w0.masked_fill(mask, 0))


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
def test_sparsegpt_plugin_writes_updated_weights(pattern: Pattern) -> None:
    linear, x, stats = _setup(3)
    w0 = linear.weight.detach().clone()
    mask = SparseGPTPruner(SparseGPTPruner.Options(blocksize=32)).prune(linear, stats, 0.5, pattern)
    w = linear.weight.detach()
    assert torch.equal(w == 0, mask)
    assert int(mask.sum()) == w0.numel() // 2
    assert not torch.allclose(w[~mask], w0[~mask])  # kept weights were updated
    wanda_lin = torch.nn.Linear(IN, OUT, bias=False)
    with torch.no_grad():
        wanda_lin.weight.copy_(w0)
    WandaPruner().prune(wanda_lin, stats, 0.5, pattern)
    err_sgpt = torch.linalg.norm((w0 - w) @ x.T)
    err_wanda = torch.linalg.norm((w0 - wanda_lin.weight.detach()) @ x.T)
    assert err_sgpt < err_wanda


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
@pytest.mark.parametrize("cls", [MagnitudePruner, WandaPruner, SparseGPTPruner])
def test_nm_plugins_exact_n_per_group(cls: Any, n: int, m: int) -> None:
    linear, _, stats = _setup(4)
    mask = cls().prune(linear, stats, 0.9, Pattern(n, m))  # sparsity is ignored under N:M
    zeros = (linear.weight.detach() == 0).reshape(OUT, IN // m, m).sum(-1)
    assert (zeros == n).all()
    assert (mask.reshape(OUT, IN // m, m).sum(-1) == n).all()


@pytest.mark.parametrize("cls", [MagnitudePruner, WandaPruner, SparseGPTPruner])
def test_plugins_keep_half_precision_dtype(cls: Any) -> None:
    linear, _, stats = _setup(5)
    linear = linear.to(torch.bfloat16)
    mask = cls().prune(linear, stats, 0.5, Pattern())
    assert linear.weight.dtype == torch.bfloat16
    assert (linear.weight.detach()[mask] == 0).all()
    assert int(mask.sum()) == OUT * IN // 2


def test_missing_statistic_is_reported() -> None:
    linear, _, _ = _setup(6)
    with pytest.raises(RuntimeError, match="input_sq_norm"):
        WandaPruner().prune(linear, LinearStats(nsamples=1, ntokens=1), 0.5, Pattern())

"""Activation statistics of a decoder layer's linear inputs, gathered by forward hooks.

Linears that read the same tensor (q/k/v, gate/up) form an input group: one hook per group, one
accumulation per group, shared by its linears. The union of the statistics every plugin asked for
is gathered in the same forward. Accumulation is in float32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from lsa_framework.types import STAT_NAMES, LinearInfo, LinearStats


class _GroupAccumulator:
    def __init__(self, in_features: int, needs: frozenset[str], device: torch.device) -> None:
        self.nsamples = 0
        self.ntokens = 0
        f32 = torch.float32
        self.sq_norm = torch.zeros(in_features, dtype=f32, device=device) if "input_sq_norm" in needs else None
        self.gram = torch.zeros(in_features, in_features, dtype=f32, device=device) if "gram" in needs else None

    def add(self, x: torch.Tensor) -> None:
        # x: (batch, tokens, in) or (tokens, in); a "sample" is one sequence, as in the references.
        batch = x.shape[0] if x.dim() == 3 else 1
        flat = x.reshape(-1, x.shape[-1]).float()
        self.nsamples += batch
        self.ntokens += flat.shape[0]
        if self.sq_norm is not None:
            self.sq_norm += flat.pow(2).sum(dim=0)
        if self.gram is not None:
            self.gram.addmm_(flat.T, flat)

    def result(self) -> LinearStats:
        n = max(self.nsamples, 1)
        return LinearStats(
            nsamples=self.nsamples,
            ntokens=self.ntokens,
            # Wanda's scaler_row: Σ_tokens x² averaged over sequences.
            input_sq_norm=None if self.sq_norm is None else self.sq_norm / n,
            # SparseGPT's H = (2/n) Σ XᵀX.
            gram=None if self.gram is None else self.gram * (2.0 / n),
        )


@contextmanager
def gather_stats(linears: Sequence[LinearInfo], needs: Iterable[str]) -> Iterator[dict[str, LinearStats]]:
    """Hook ``linears`` while the caller runs forwards; on exit, fill the yielded dict.

    The dict maps each linear's name to its group's statistics. With no ``needs`` no hook is set.
    """
    wanted = frozenset(needs)
    unknown = wanted - STAT_NAMES
    if unknown:
        raise ValueError(f"unknown statistics requested: {sorted(unknown)}; known: {sorted(STAT_NAMES)}")
    result: dict[str, LinearStats] = {}
    groups: dict[str, list[LinearInfo]] = {}
    for info in linears:
        groups.setdefault(info.input_group, []).append(info)
    accumulators: dict[str, _GroupAccumulator] = {}
    handles = []
    if wanted:
        for group, members in groups.items():
            first = members[0].module
            acc = _GroupAccumulator(first.in_features, wanted, first.weight.device)
            accumulators[group] = acc

            def hook(_module: Any, args: tuple[Any, ...], _acc: _GroupAccumulator = acc) -> None:
                _acc.add(args[0].detach())

            handles.append(first.register_forward_pre_hook(hook))
    try:
        yield result
    finally:
        for handle in handles:
            handle.remove()
    for group, members in groups.items():
        stats = accumulators[group].result() if group in accumulators else LinearStats(0, 0)
        for info in members:
            result[info.name] = stats

"""What the engine gives a searching scorer (capability ``search``): candidate allocations applied to
the model, and their KL divergence from the dense model on calibration tokens.

A search (``--scorer evo``) evaluates hundreds of allocations, so applying one must be cheap and must
not depend on the order in which candidates come:

* every candidate is pruned from the **dense** weights with the **dense** model's statistics (those of
  ``--pipeline basic``, gathered in the scoring pass), by the run's own pruner, unit by unit; a unit is
  only re-pruned where the candidate's sparsity differs from what the model holds, and pruned units
  are kept in a bounded cache (EvoPress's level database, filled as the search visits levels);
* the fitness is KL(dense ‖ pruned) of the next-token distributions, averaged over every position of
  calibration windows of the run's ``seqlen``; the windows of one ``sample_seed`` are drawn with the
  calibration sampler (same seed, same windows), so all candidates of a selection stage are compared
  on the same tokens. The dense log-probabilities of the current windows are computed once (the
  model made dense for one forward) and kept until the windows change.

The forward is the model's own (``model(input_ids)``), as the perplexity evaluator runs it, so every
architecture the evaluators support works; the decoder layers are the layout's, pruned in place.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lsa_framework.data.windows import sample_windows
from lsa_framework.engine.plugins import PrunerHandle
from lsa_framework.types import Layout, LinearStats, Pattern, Unit

#: Pruned weights kept for re-use (bytes); a search moves around its parent, so recent levels recur.
CACHE_BYTES = 2 << 30


class CandidateModel:
    """Applies allocations (unit → sparsity) to the model in place, from its dense weights."""

    def __init__(
        self,
        layout: Layout,
        units: Sequence[Unit],
        pruner: PrunerHandle,
        stats: Mapping[int, Mapping[str, LinearStats]],
        dense: Mapping[str, torch.Tensor],
        pattern: Pattern,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.layout = layout
        self.units = {u.name: u for u in units}
        self.pruner = pruner
        self.stats = stats
        self.dense = dense
        self.pattern = pattern
        self.applied: dict[str, float] = {}  # unit -> sparsity the model holds now (absent: dense)
        self.prepared = ""  # what the pruner's prepare() answered for the current candidate
        self.cache: OrderedDict[tuple[str, float, str], list[torch.Tensor]] = OrderedDict()
        self.cache_bytes = cache_bytes
        self.cached = 0
        self.prunes = 0  # units pruned (not served from the cache)

    def _restore(self, unit: Unit) -> None:
        with torch.no_grad():
            for info in unit.linears:
                info.weight.copy_(self.dense[info.name])

    def apply(self, sparsities: Mapping[str, float]) -> None:
        """Make the model hold ``sparsities`` (every unit of the job)."""
        linear_sparsity = {info.name: float(sparsities[n]) for n, u in self.units.items() for info in u.linears}
        prepared = json.dumps(self.pruner.prepare(linear_sparsity), sort_keys=True, default=str)
        if prepared != self.prepared:  # e.g. another rounding rule: nothing applied so far is valid
            self.dense_model()
            self.prepared = prepared
        by_layer: dict[int, list[Unit]] = {}
        for name, unit in self.units.items():
            if self.applied.get(name) != float(sparsities[name]):
                by_layer.setdefault(unit.layer, []).append(unit)
        for layer, units in sorted(by_layer.items()):
            with self.layout.resident(layer):
                todo = []
                for unit in units:
                    key = (unit.name, float(sparsities[unit.name]), self.prepared)
                    saved = self.cache.get(key)
                    if saved is not None:
                        self.cache.move_to_end(key)
                        with torch.no_grad():
                            for info, weight in zip(unit.linears, saved, strict=True):
                                info.weight.copy_(weight)
                    else:
                        self._restore(unit)
                        todo.append(unit)
                if todo:
                    linears = [info for unit in todo for info in unit.linears]
                    wanted = {info.name: float(sparsities[u.name]) for u in todo for info in u.linears}
                    self.pruner.prune_layer(linears, self.stats.get(layer, {}), wanted, self.pattern)
                    self.prunes += len(todo)
                    for unit in todo:
                        self._remember((unit.name, float(sparsities[unit.name]), self.prepared), unit)
                for unit in units:
                    self.applied[unit.name] = float(sparsities[unit.name])

    def _remember(self, key: tuple[str, float, str], unit: Unit) -> None:
        weights = [info.weight.detach().clone() for info in unit.linears]
        size = sum(w.numel() * w.element_size() for w in weights)
        if size > self.cache_bytes:
            return
        self.cache[key] = weights
        self.cached += size
        while self.cached > self.cache_bytes:
            _, dropped = self.cache.popitem(last=False)
            self.cached -= sum(w.numel() * w.element_size() for w in dropped)

    def dense_model(self) -> None:
        """Put every pruned unit back to its dense weights."""
        for name in list(self.applied):
            unit = self.units[name]
            with self.layout.resident(unit.layer):
                self._restore(unit)
        self.applied.clear()


class KLFitness:
    """KL(dense ‖ candidate) per token on calibration windows chosen by a seed; see the module docstring."""

    def __init__(
        self,
        model: Any,
        candidates: CandidateModel,
        tokenizer: Any,
        documents: Sequence[str],
        seqlen: int,
        bos: int | None,
        device: torch.device,
    ) -> None:
        self.model = model
        self.candidates = candidates
        self.tokenizer = tokenizer
        self.documents = list(documents)
        self.seqlen = seqlen
        self.bos = bos
        self.device = device
        self._windows_key: tuple[int, int] | None = None
        self._windows: torch.Tensor | None = None
        self._dense: list[torch.Tensor] = []
        self.evaluations = 0
        self.tokens = 0

    def windows(self, tokens: int, sample_seed: int) -> torch.Tensor:
        """ceil(tokens / seqlen) calibration windows drawn with ``sample_seed``."""
        count = max(1, math.ceil(tokens / self.seqlen))
        return sample_windows(self.tokenizer, self.documents, count, self.seqlen, sample_seed, self.bos)

    def _log_probs(self, window: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(input_ids=window[None].to(self.device), use_cache=False).logits[0].float()
        return torch.log_softmax(logits, dim=-1)

    def _prepare(self, tokens: int, sample_seed: int) -> torch.Tensor:
        key = (tokens, sample_seed)
        if key != self._windows_key or self._windows is None:
            windows = self.windows(tokens, sample_seed)
            held = dict(self.candidates.applied)
            self.candidates.dense_model()
            self._dense = [self._log_probs(w) for w in windows]
            if held:
                self.candidates.apply(held)
            self._windows, self._windows_key = windows, key
        return self._windows

    def __call__(self, sparsities: Mapping[str, float], tokens: int, sample_seed: int) -> float:
        windows = self._prepare(int(tokens), int(sample_seed))
        self.candidates.apply(sparsities)
        total, count = 0.0, 0
        for window, dense in zip(windows, self._dense, strict=True):
            pruned = self._log_probs(window)
            kl = (dense.exp() * (dense - pruned)).sum(dim=-1)
            total += float(kl.double().sum())
            count += kl.numel()
        self.evaluations += 1
        self.tokens += count
        return total / max(count, 1)


class ProgressReporter:
    """``progress(done, total, text)`` for a SearchContext, shown as one of the observer's pass bars
    (one step per generation) with a status line per call."""

    def __init__(self, observer: Any, name: str = "search") -> None:
        self.observer = observer
        self.name = name
        self.started = False
        self.done = 0

    def __call__(self, done: int, total: int | None, text: str) -> None:
        if not self.started:
            self.observer.start_pass(self.name, total or 0)
            self.started = True
        while self.done < done:
            self.observer.advance()
            self.done += 1
        if text:
            self.observer.message(text)

    def close(self) -> None:
        if self.started:
            self.observer.end_pass()
            self.started = False

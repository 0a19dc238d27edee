"""The reference pruning pass, written the way the original Wanda and SparseGPT scripts are.

    from reference_prune import reference_prune   # used by benchmarks/speed.py --reference

Structure of locuslab/wanda ``lib/prune.py`` (``prune_wanda``) and IST-DASLab/sparsegpt
``opt.py``/``llama.py`` (``llama_sequential``), kept on purpose so that the framework's engine can be
timed against it:

- sequential over the decoder layers, the calibration activations held between layers;
- for each layer, every ``nn.Linear`` found in it gets its OWN forward hook and its OWN statistic:
  Wanda's ``scaler_row`` per projection (``WrappedGPT``), SparseGPT's Hessian H = 2/n·ΣXᵀX per
  projection (``SparseGPT.add_batch``) — q, k and v each build the same Gram, so do gate and up;
- one forward of the (dense) layer over all calibration batches fills the seven statistics;
- each projection is then pruned on its own, its mask recomputed from its own statistic;
- the pruned layer is run again over every batch (the last layer too, as there) for the next inputs.

The masks and updates come from :mod:`reference_kernels`, transcriptions of the originals' own code
(a full sort per row or block, SparseGPT's column loop per projection), with the same exact-count
selection as the framework so that the masks can be asserted identical.

Statistics: ``accumulation="exact"`` (the default) adds Σx² and XᵀX batch by batch with the same
float32 operations as the framework's engine and scales by 1/n (Wanda) or 2/n (SparseGPT) at the end,
so the statistics, hence the masks, are bit-identical when the engine is right.
``accumulation="running"`` uses the originals' running averages instead (``scaler_row *= n/(n+b);
scaler_row += ‖x‖²/n``, ``H *= n/(n+b); H += (√(2/n)·X)(√(2/n)·X)ᵀ``): the same values up to float
rounding, so a few near-tied weights may fall on the other side of the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from reference_kernels import sparsegpt_reference, wanda_mask_reference
from torch import nn

from lsa_framework.engine.layer_calls import capture_activations
from lsa_framework.types import Pattern

ReferencePruner = Literal["wanda", "sparsegpt"]
Accumulation = Literal["exact", "running"]


def find_linears(module: nn.Module, prefix: str = "") -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` under ``module`` by (prefixed) name, as ``find_layers`` in the originals."""
    return {
        f"{prefix}.{name}" if prefix else name: child
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear)
    }


class WrappedLinear:
    """One projection's own statistic (``WrappedGPT`` in Wanda, ``SparseGPT`` in SparseGPT)."""

    def __init__(self, linear: nn.Linear, pruner: ReferencePruner, accumulation: Accumulation) -> None:
        self.linear = linear
        self.pruner = pruner
        self.accumulation = accumulation
        columns = linear.in_features
        device = linear.weight.device
        self.nsamples = 0
        self.scaler_row = torch.zeros(columns, dtype=torch.float32, device=device) if pruner == "wanda" else None
        self.H = torch.zeros(columns, columns, dtype=torch.float32, device=device) if pruner == "sparsegpt" else None

    def add_batch(self, inp: torch.Tensor) -> None:
        batch = inp.shape[0] if inp.dim() == 3 else 1
        flat = inp.reshape(-1, inp.shape[-1]).float()  # (tokens, in)
        if self.accumulation == "exact":
            self.nsamples += batch
            if self.scaler_row is not None:
                self.scaler_row += flat.pow(2).sum(dim=0)
            if self.H is not None:
                self.H.addmm_(flat.T, flat)
            return
        # The originals' running averages over sequences.
        total = self.nsamples + batch
        if self.scaler_row is not None:
            self.scaler_row *= self.nsamples / total
            self.scaler_row += torch.norm(flat.T, p=2, dim=1) ** 2 / total
        if self.H is not None:
            self.H *= self.nsamples / total
            scaled = math.sqrt(2 / total) * flat.T
            self.H += scaled.matmul(scaled.T)
        self.nsamples = total

    def statistic(self) -> torch.Tensor:
        if self.accumulation == "running":
            return self.scaler_row if self.scaler_row is not None else self.H  # type: ignore[return-value]
        n = max(self.nsamples, 1)
        if self.scaler_row is not None:
            return self.scaler_row / n
        assert self.H is not None
        return self.H * (2.0 / n)

    def free(self) -> None:
        self.scaler_row = None
        self.H = None


def _layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def reference_prune(
    model: nn.Module,
    stack: nn.ModuleList,
    input_ids: torch.Tensor,
    batch_size: int,
    pruner: ReferencePruner,
    layer_sparsity: Sequence[float],
    pattern: Pattern | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    accumulation: Accumulation = "exact",
) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place, per projection; return each linear's mask (True = pruned) by full name.

    ``stack`` is the model's ``nn.ModuleList`` of decoder layers, ``layer_sparsity[i]`` the sparsity of
    every linear of layer ``i``. Runs on the CPU, in the model's dtype.
    """
    pattern = pattern if pattern is not None else Pattern()
    names = {module: name for name, module in model.named_modules()}
    # Layer-0 inputs, and how the model calls each decoder layer on each batch (its own masks, rotary
    # tables, ...): recorded with the engine's dry pass, as the originals catch them from layer 0.
    acts = capture_activations(model, stack, input_ids, batch_size, None)
    inps = list(acts.hidden)
    masks: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(stack):
        subset = find_linears(layer, names[layer])
        wrapped = {name: WrappedLinear(linear, pruner, accumulation) for name, linear in subset.items()}
        handles = []
        for name, linear in subset.items():

            def add_batch(
                _module: nn.Module, inp: tuple[Any, ...], _out: Any, own: WrappedLinear = wrapped[name]
            ) -> None:
                own.add_batch(inp[0].data)

            handles.append(linear.register_forward_hook(add_batch))
        for hidden, call in zip(inps, acts.calls[index], strict=True):
            call(layer, hidden)
        for handle in handles:
            handle.remove()

        sparsity = float(layer_sparsity[index])
        for name, linear in subset.items():
            statistic = wrapped[name].statistic()
            if pruner == "wanda":
                mask = wanda_mask_reference(linear.weight.data, statistic, sparsity, pattern)
                linear.weight.data[mask] = 0
            else:
                new_weight, mask = sparsegpt_reference(
                    linear.weight.data, statistic, sparsity, pattern, blocksize=blocksize, percdamp=percdamp
                )
                linear.weight.data.copy_(new_weight)
            wrapped[name].free()
            masks[name] = mask

        inps = [_layer_output(call(layer, hidden)) for hidden, call in zip(inps, acts.calls[index], strict=True)]
    return masks

"""The pruning masks of an already-pruned model, read back from its weights.

    lsaf recover out/wanda-70 --method masked --steps 200

A pruned model on disk carries no mask file of its own: the masks *are* the exact zeros of the pruned
linears' weights (``True`` = pruned, the convention of :mod:`lsa_framework.pruners.masks`). A weight
that was already exactly zero in the dense model counts as pruned here, which is the safe side: it
stays zero through recovery. Such weights make the mask a superset of the one the pruner returned, so
its hash then differs from the one in the pruning run's ``run.json``.

:func:`mask_hash` is byte-for-byte the hash written to ``run.json`` (``mask_sha256``): the first 16 hex
digits of the sha256 of the bool tensor's bytes (one byte per weight, row-major), so the masks after
recovery can be checked against the pruning run's record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from lsa_framework.engine.masks import mask_hash
from lsa_framework.errors import LsafError


class MaskChangedError(LsafError):
    """A weight that was pruned is no longer exactly zero, or the masks differ from the expected ones."""


def linear_names(model: torch.nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules that pruning targets: all of them but the output head.

    In a model wrapped by peft, an adapter layer counts as the linear it wraps (under its own name).

    The lead's layout discovery gives the same set for the supported architectures; callers that have
    a layout should pass its names instead.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    names: list[str] = []
    wrapper = None  # a peft adapter layer stands for its base linear; its own linears are not pruned
    for name, module in model.named_modules():
        if wrapper is not None and name.startswith(wrapper):
            continue
        wrapper = None
        get_base = getattr(module, "get_base_layer", None)
        if callable(get_base):
            wrapper = f"{name}."
            module = get_base()
        if isinstance(module, torch.nn.Linear) and module is not head:
            names.append(name)
    return names


def find_linear(model: torch.nn.Module, name: str) -> torch.nn.Linear:
    """The linear called ``name`` in ``model``; for a peft adapter layer, the linear it wraps."""
    module = model.get_submodule(name)
    get_base = getattr(module, "get_base_layer", None)  # a peft adapter layer: its wrapped linear
    if callable(get_base):
        module = get_base()
    if not isinstance(module, torch.nn.Linear):
        raise LsafError(f"{name} is a {type(module).__name__}, not a linear layer; pass the names of linear layers.")
    return module


def masks_from_zeros(model: torch.nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The pruning mask of each linear (``True`` where its weight is exactly zero), on the weight's device."""
    names = linear_names(model) if names is None else list(names)
    with torch.no_grad():
        return {name: find_linear(model, name).weight == 0 for name in names}


def mask_hashes(masks: Mapping[str, torch.Tensor]) -> dict[str, str]:
    return {name: mask_hash(mask) for name, mask in masks.items()}


def realised_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Share of pruned weights over all masked linears together (weighted by size)."""
    pruned = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    return pruned / total if total else 0.0


def check_zeros_kept(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise unless every pruned weight of every masked linear is exactly zero (not merely small)."""
    with torch.no_grad():
        for name, mask in masks.items():
            weight = find_linear(model, name).weight
            if weight.shape != mask.shape:
                raise MaskChangedError(f"{name} has shape {tuple(weight.shape)} but its mask {tuple(mask.shape)}.")
            leaked = int(torch.count_nonzero(weight.masked_fill(~mask, 0)))
            if leaked:
                raise MaskChangedError(f"{leaked} pruned weights of {name} are no longer zero.")


def new_zeros(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """How many weights the masks keep are exactly zero now."""
    with torch.no_grad():
        return sum(
            int((find_linear(model, name).weight.masked_fill(mask, 1) == 0).sum()) for name, mask in masks.items()
        )


def check_same_masks(expected: Mapping[str, str], actual: Mapping[str, str]) -> None:
    """Raise when two mask-hash records differ (names or hashes)."""
    if expected.keys() != actual.keys():
        missing = sorted(set(expected) ^ set(actual))
        raise MaskChangedError(f"The masked linears differ: {', '.join(missing[:5])}.")
    changed = [name for name in expected if expected[name] != actual[name]]
    if changed:
        raise MaskChangedError(f"The masks of {len(changed)} linears changed, e.g. {changed[0]}.")

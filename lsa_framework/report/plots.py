"""Plots: the allocated sparsity across depth, one line per scorer (or run) compared."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lsa_framework.storage.atomic import write_file


def plot_loss_curve(losses: Sequence[float], path: Path) -> None:
    """The training loss of a recovery, step by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, marker="o", markersize=2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def plot_sparsity_profile(runs: Mapping[str, Sequence[Any]], path: Path) -> None:
    """``runs`` maps a label to its unit records (``layer``, ``name``, ``sparsity``, ``numel``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, units in runs.items():
        by_layer: dict[int, list[Any]] = {}
        for u in units:
            by_layer.setdefault(u.layer, []).append(u)
        layers = sorted(by_layer)
        # Parameter-weighted mean over a layer's units, so block/projection runs compare with layer runs.
        values = [sum(u.sparsity * u.numel for u in by_layer[i]) / sum(u.numel for u in by_layer[i]) for i in layers]
        ax.plot(layers, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)

"""Layer sensitivity: prune each pruning group alone and measure how much held-out quality drops.

The table says which layers can lose channels cheaply; ``derive_layer_weights`` turns it into per-layer
multipliers of the pruning ratio (the least sensitive layers pruned hardest, mean 1), which
``PruneTarget.layer_weights`` applies to a fixed ratio or to the ratio a budget search settles on.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from compress.pruning.prune import GradFn, PruneTarget, _prune_once, prunable_layers
from compress.runtime.profile import count_macs

ScoreFn = Callable[[nn.Module], float]


def layer_sensitivity(model: nn.Module, example_input: torch.Tensor, score: ScoreFn, ratio: float,
                      target: PruneTarget | None = None, grad_fn: GradFn | None = None) -> list[dict[str, float | str]]:
    """One row per prunable layer: ``layer``, ``psnr`` after pruning that layer's group alone by ``ratio``,
    ``drop_db`` from the unpruned score and ``macs_saved`` (fraction), most sensitive first."""
    target = target or PruneTarget(ratio=ratio)
    base = score(model)
    base_macs = count_macs(model, tuple(example_input.shape))
    rows: list[dict[str, float | str]] = []
    for name in prunable_layers(model, example_input):
        trial = copy.deepcopy(model)
        _prune_once(trial, example_input, target.model_copy(update={"layer_ratios": {name: ratio}}), 0.0, grad_fn)
        quality = score(trial)
        rows.append({"layer": name, "psnr": quality, "drop_db": base - quality,
                     "macs_saved": 1 - count_macs(trial, tuple(example_input.shape)) / base_macs})
    return sorted(rows, key=lambda r: -float(r["drop_db"]))


def derive_layer_weights(rows: list[dict[str, float | str]], spread: float = 0.5) -> dict[str, float]:
    """Rank-based ratio multipliers: ``1 + spread`` for the least sensitive layer, ``1 - spread`` for the
    most sensitive, linearly in between (mean 1)."""
    ranked = sorted(rows, key=lambda r: float(r["drop_db"]))  # least sensitive first
    n = len(ranked)
    if n == 1:
        return {str(ranked[0]["layer"]): 1.0}
    return {str(r["layer"]): 1 + spread - 2 * spread * i / (n - 1) for i, r in enumerate(ranked)}


def plot_sensitivity(rows: list[dict[str, float | str]], path: Path, ratio: float) -> Path:
    """Horizontal bar chart of the PSNR drop per layer (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [str(r["layer"]) for r in rows][::-1]
    drops = [float(r["drop_db"]) for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    ax.barh(layers, drops, color=["#c0392b" if d > 0 else "#27ae60" for d in drops])
    ax.set_xlabel(f"held-out PSNR drop (dB) when this layer alone loses {ratio:.0%} of its channels")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sensitivity_markdown(rows: list[dict[str, float | str]]) -> str:
    lines = ["| layer | PSNR after | drop dB | MACs saved |", "|---|---|---|---|"]
    lines += [f"| {r['layer']} | {float(r['psnr']):.2f} | {float(r['drop_db']):+.3f} | {float(r['macs_saved']):.1%} |"
              for r in rows]
    return "\n".join(lines) + "\n"

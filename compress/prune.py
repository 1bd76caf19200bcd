"""Structured channel pruning with torch-pruning's dependency graph.

Concats, residual adds and norms are followed by the graph.  Layers whose output channels are fixed
by the model's contract (the RGB head, convs feeding a PixelShuffle whose r^2 grouping torch-pruning
1.6 does not model) are left out; blocks torch-pruning cannot trace (attention) prune as one unit
(``compress.prune_rules``): a model lists them in ``prune_ignore``; by default the last conv is.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch_pruning as tp
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compress.checkpoint import channel_plan
from compress.prune_rules import CUSTOMIZED_PRUNERS, coupled_blocks_as_leaves

Importance = Literal["magnitude", "bn_scale"]


class PruneTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(0.25, gt=0.0, lt=0.95, description="fraction of channels removed per prunable layer")
    importance: Importance = "magnitude"
    global_pruning: bool = False
    round_to: int | None = Field(None, ge=1, description="keep widths a multiple of this")


def ignored_layers(model: nn.Module) -> list[nn.Module]:
    names = getattr(model, "prune_ignore", None)
    modules = dict(model.named_modules())
    if names is not None:
        return [modules[n] for n in names]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return convs[-1:]


def _importance(kind: Importance) -> tp.importance.Importance:
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def prune_model(model: nn.Module, example_input: torch.Tensor, target: PruneTarget) -> dict[str, int]:
    """Prune ``model`` in place to the target; returns the new channel plan."""
    model.eval()
    if target.importance == "bn_scale" and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise ValueError("importance 'bn_scale' needs a model with BatchNorm layers; use 'magnitude'")
    with coupled_blocks_as_leaves(model):
        pruner = tp.pruner.MetaPruner(
            model,
            example_input,
            importance=_importance(target.importance),
            pruning_ratio=target.ratio,
            global_pruning=target.global_pruning,
            ignored_layers=ignored_layers(model),
            round_to=target.round_to,
            customized_pruners=CUSTOMIZED_PRUNERS,
        )
        pruner.step()
    return channel_plan(model)

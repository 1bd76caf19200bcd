"""The PyTorch side of tiled inference: a model as a ``run_batch``, tiling through it, and its
receptive-field margin.

Kept apart from ``compress.runtime.tiling`` (numpy only, shipped inside every bundle) so running a
bundle never imports torch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.runtime.tiling import (
    DEFAULT_BLEND,
    RunBatch,
    UnboundedReceptiveFieldError,
    measure_receptive_field,
    tiled_inference,
)


def torch_runner(model: nn.Module) -> RunBatch:
    """``run_batch`` for a PyTorch model: eval mode, no autograd, on the model's device."""
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(x)).to(device)).float().cpu().numpy()

    return run


def tiled_torch(packed: np.ndarray, model: nn.Module, tile: int | tuple[int, int], overlap: int,
                blend: int = DEFAULT_BLEND, batch: int = 4, align: int = 1) -> np.ndarray:
    """``tiled_inference`` through a PyTorch model (any tile size the model accepts)."""
    return tiled_inference(packed, torch_runner(model), tile, overlap, blend=blend, batch=batch, align=align)


def receptive_field_margin(model: nn.Module | RunBatch, size: int = 64, channels: int = 4) -> int:
    """Packed pixels an output depends on around its own position: the smallest exact ``overlap``.

    Raises ``UnboundedReceptiveFieldError`` when the field reaches past a quarter of the probe (global
    pooling, or a field too wide for ``size``): then no overlap makes tiling exact; choose one by hand.
    """
    run = torch_runner(model) if isinstance(model, nn.Module) else model
    field = measure_receptive_field(run, size, channels)
    if not field.bounded:
        raise UnboundedReceptiveFieldError(
            f"the centre of a {size}x{size} probe depends on inputs {field.margin} packed pixels away: the model "
            f"has global pooling or a receptive field too wide for this probe; tiling cannot be exact, pick an "
            f"overlap by hand (or probe with a larger size)")
    return field.margin


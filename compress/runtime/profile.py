"""Model size figures every stage reports: parameters, MACs (torch-pruning's counter) and file size."""
from __future__ import annotations

from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one forward pass at ``input_shape`` (NCHW)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(input_shape, device=device))
    model.train(was_training)
    return int(macs)


def size_kb(path: Path) -> float:
    return Path(path).stat().st_size / 1024.0

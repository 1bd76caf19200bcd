"""What a model is trained and scored on (``Task``), and scoring it on held-out images.

Shared by the training loop (``distill.trainer``: inputs, targets and the forward pass per task) and
by every stage and benchmark that scores a model (``evaluate``: the papers' per-image PSNR / SSIM from
``distill.metrics``), so a model is scored the same way wherever it is scored.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from distill.metrics import psnr, ssim


class _MultiLevel(Protocol):
    def forward_levels(self, x: torch.Tensor) -> Any: ...


@dataclass(frozen=True)
class Task:
    """What a model is trained and scored on, beyond plain packed RAW -> full-resolution RGB.

    ``level`` > 0: a multi-level model (PyNET) is run to that level, and the target is the RGB image
    area-downsampled by 2^level (PyNET's per-level targets).  ``clean_image``: the model maps the clean
    target J to itself (the LW-ISP paper's clean-image teacher g(J) -> J), so RAW is not used.
    """

    level: int = 0
    clean_image: bool = False
    multilevel: bool = False  # train on ``model.forward_levels(x)`` (AA-UNet); scoring uses the final image

    def inputs_targets(self, raw: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = rgb if self.clean_image else raw
        target = F.avg_pool2d(rgb, 2**self.level) if self.level else rgb
        return x, target

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x, level=self.level) if self.level else model(x)

    def train_forward(self, model: nn.Module, x: torch.Tensor) -> Any:
        return cast(_MultiLevel, model).forward_levels(x) if self.multilevel else self.forward(model, x)


DEFAULT_TASK = Task()


@torch.no_grad()
def predict(model: nn.Module, raw: torch.Tensor, task: Task = DEFAULT_TASK) -> torch.Tensor:
    model.eval()
    return task.forward(model, raw).clamp(0, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], task: Task = DEFAULT_TASK
) -> dict[str, float]:
    """Mean PSNR / SSIM over held-out images (each pair: packed RAW (4,h,w), RGB (3,2h,2w))."""
    if not pairs:
        raise ValueError("evaluation needs at least one held-out image")
    scores = {"psnr": 0.0, "ssim": 0.0}
    for raw, rgb in pairs:
        x, target = task.inputs_targets(raw.unsqueeze(0), rgb.unsqueeze(0))
        out = predict(model, x, task)
        scores["psnr"] += psnr(out, target)
        scores["ssim"] += ssim(out, target)
    return {k: v / len(pairs) for k, v in scores.items()}

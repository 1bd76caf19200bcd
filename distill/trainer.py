"""One training loop for teachers, students and fine-tunes: step-based, seeded, logged per step.

Students add distillation terms from a frozen teacher (``distill.distiller.Distiller``: output KD,
feature KD through adapters, heterogeneous clean-image KD); every term is logged on its own.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distill.distiller import Distiller
from distill.losses import KNOWN_LOSSES, WeightedLoss
from distill.metrics import psnr, ssim

if TYPE_CHECKING:
    from distill.data.datasets import PairedPatchDataset

LogFn = Callable[[dict[str, float], int], None]


class PerceptualSpec(BaseModel):
    """A VGG-19 feature loss; the weights are a local torchvision state_dict (never downloaded)."""

    model_config = ConfigDict(extra="forbid")

    weights: Path
    layer: str = "relu5_4"

    @field_validator("weights")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"perceptual loss weights file {str(value)!r} not found (nothing is downloaded)")
        return value


class TrainSpec(BaseModel):
    """How long and how to train; a recipe's ``train:`` block."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, ge=0, description="optimiser steps")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    losses: dict[str, float] = Field(default_factory=lambda: {"l1": 1.0})
    perceptual: PerceptualSpec | None = Field(None, description="settings of the 'perceptual' loss term")
    log_every: int = Field(10, ge=1)

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in KNOWN_LOSSES:
                raise ValueError(f"unknown loss {name!r}; known: {', '.join(KNOWN_LOSSES)}")
        if not value:
            raise ValueError("needs at least one loss term")
        return value

    @model_validator(mode="after")
    def _perceptual_configured(self) -> "TrainSpec":
        if "perceptual" in self.losses and self.perceptual is None:
            raise ValueError("loss 'perceptual' needs perceptual.weights: a local VGG-19 state_dict file")
        return self

    def criterion(self) -> WeightedLoss:
        configured = {}
        if self.perceptual is not None and "perceptual" in self.losses:
            from distill.perceptual import PerceptualLoss

            configured["perceptual"] = PerceptualLoss(self.perceptual.weights, self.perceptual.layer)
        return WeightedLoss(self.losses, configured)


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
        return model.forward_levels(x) if self.multilevel else self.forward(model, x)


DEFAULT_TASK = Task()


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def training_batches(dataset: PairedPatchDataset, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless, reproducible stream of batches: a new crop set and order every epoch."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=False)
        yield from loader
        epoch += 1


def train(
    model: nn.Module,
    dataset: PairedPatchDataset,
    spec: TrainSpec,
    *,
    seed: int = 0,
    kd: Distiller | None = None,
    log: LogFn | None = None,
    desc: str = "train",
    task: Task = DEFAULT_TASK,
    criterion: Callable[[Any, torch.Tensor], tuple[torch.Tensor, dict[str, float]]] | None = None,
) -> TrainResult:
    """Train ``model`` in place with Adam + cosine decay; logs every ``spec.log_every`` steps.

    ``criterion`` replaces the recipe's weighted loss for models with their own objective (AA-UNet's
    multi-level loss receives the model's raw input and the target instead of one prediction).
    ``kd`` adds its distillation terms; its adapters are prepared on the first batch and trained with
    the model, and are not part of it.
    """
    torch.manual_seed(seed)
    model.train()
    criterion = criterion or spec.criterion()
    batches = training_batches(dataset, spec.batch_size, seed)
    first = next(batches)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: the model has no trainable parameters (all frozen, e.g. it served as a KD teacher)")
    if kd:
        kd.prepare(model, *task.inputs_targets(*first))
        params += kd.parameters()
    optimiser = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, spec.steps) / max(spec.steps, 1)))
    )
    result = TrainResult(steps=spec.steps, final_loss=float("nan"))
    bar = tqdm(range(spec.steps), desc=desc, leave=False, dynamic_ncols=True)
    for step in bar:
        x, target = task.inputs_targets(*(first if step == 0 else next(batches)))
        taps = kd.student_taps if kd and kd.student_taps else nullcontext()
        with taps:
            pred = task.train_forward(model, x)
        loss, parts = criterion(pred, target)
        if kd:
            kd_loss, kd_parts = kd.loss(pred, x, target)
            parts.update(kd_parts)
            loss = loss + kd_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {float(loss)} at step {step} (terms: {parts})")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        parts["loss"] = float(loss.detach())
        result.final_loss = parts["loss"]
        if step % spec.log_every == 0 or step == spec.steps - 1:
            result.history.append({"step": step, **parts})
            if log:
                log({f"train_{k}": v for k, v in parts.items()}, step)
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
    model.eval()
    return result


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

"""Named loss terms combined into one weighted sum, each term reported on its own.

Recipes name losses (``{l1: 1.0, ms_ssim: 0.4}``); a term is ``fn(pred, target) -> scalar``.  Unknown
names fail with the list of known ones.
"""
from __future__ import annotations

import teachers.torch_compat  # noqa: F401  (before torchmetrics: torchvision on CPU torch, see that module)

# isort: split
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from distill.metrics import ms_ssim

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smooth L1 variant sqrt((x-y)^2 + eps^2), robust to outliers and differentiable at 0."""
    return torch.sqrt((pred - target) ** 2 + eps**2).mean()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - cast(torch.Tensor, structural_similarity_index_measure(pred, target, data_range=1.0))


def ms_ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - ms_ssim(pred, target)


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity along channels, averaged over positions (feature-direction matching)."""
    return (1.0 - F.cosine_similarity(pred, target, dim=1)).mean()


def soft_histogram(images: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """Per-image, per-channel histogram over [0, 1] that is differentiable in the pixel values.

    A hard histogram has zero gradient almost everywhere; splitting each pixel's unit mass linearly
    between its two nearest bin centres ``linspace(0, 1, bins)`` (a triangular kernel of width
    ``1/(bins-1)``) makes the bin masses piecewise linear in the value.  Two ``scatter_add`` calls keep
    memory at two values per pixel instead of one per pixel and bin.  Returns ``(B, C, bins)``, each
    histogram summing to 1.
    """
    if bins < 2:
        raise ValueError(f"a soft histogram needs at least 2 bins, got {bins}")
    if images.ndim < 3:
        raise ValueError(f"expected (B, C, ...) images, got shape {tuple(images.shape)}")
    batch, channels = images.shape[:2]
    values = images.reshape(batch * channels, -1)
    if values.shape[1] == 0:
        raise ValueError("cannot take the histogram of an empty image")
    if not values.is_floating_point():
        values = values.float()
    position = values.clamp(0.0, 1.0) * (bins - 1)
    # The left neighbour; a value of exactly 1.0 goes to bin bins-2 with fraction 1, i.e. all to the last.
    lower = position.detach().floor().clamp_(max=bins - 2).long()
    upper_weight = position - lower.to(position.dtype)
    hist = values.new_zeros(batch * channels, bins)
    hist = hist.scatter_add(1, lower, 1.0 - upper_weight)
    hist = hist.scatter_add(1, lower + 1, upper_weight)
    return (hist / values.shape[1]).reshape(batch, channels, bins)


def colour_histogram_loss(pred: torch.Tensor, target: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """L1 distance between per-channel soft colour histograms, in [0, 2].

    MAI 2022 team ENERZAI (after HistoGAN) add this so the student matches the target's colour
    distribution, which pixel-wise L1 / SSIM barely constrain.  Mean over batch and channels of
    ``sum_bins |h_pred - h_target|``.
    """
    if pred.shape[:2] != target.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in batch/channels")
    diff = soft_histogram(pred, bins) - soft_histogram(target.to(pred.dtype), bins)
    return diff.abs().sum(dim=-1).mean()


def normalised_mse(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MSE between feature maps each scaled to unit RMS per sample: matches the pattern, not the magnitude,
    so a feature-KD weight (beta) means the same at every layer and for every teacher."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.pow(2).mean(dim=tuple(range(1, x.ndim)), keepdim=True).add(eps).sqrt()

    return F.mse_loss(unit(pred), unit(target))


LOSSES: dict[str, LossFn] = {
    "l1": F.l1_loss,
    "mse": F.mse_loss,
    "charbonnier": charbonnier,
    "ssim": ssim_loss,
    "ms_ssim": ms_ssim_loss,
    "cosine": cosine_loss,
    "nmse": normalised_mse,
    "histogram": colour_histogram_loss,
}


# Terms that need a setting from the recipe (a weights file) and so are built by the caller.
CONFIGURED_LOSSES = ("perceptual",)
KNOWN_LOSSES = tuple(sorted([*LOSSES, *CONFIGURED_LOSSES]))


def get_loss(name: str, configured: dict[str, LossFn] | None = None) -> LossFn:
    if configured and name in configured:
        return configured[name]
    if name in CONFIGURED_LOSSES:
        raise KeyError(f"loss {name!r} needs its settings (e.g. train.perceptual.weights) in the recipe")
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(KNOWN_LOSSES)}")
    return LOSSES[name]


class WeightedLoss:
    """``sum_i w_i * loss_i(pred, target)``; returns the total and each term's value for logging.

    ``configured`` supplies the terms that need settings, e.g. ``{"perceptual": PerceptualLoss(path)}``.
    """

    def __init__(self, weights: dict[str, float], configured: dict[str, LossFn] | None = None) -> None:
        if not weights:
            raise ValueError("a loss needs at least one named term")
        self.terms = {name: (get_loss(name, configured), float(w)) for name, w in weights.items()}

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total = pred.new_zeros(())
        parts: dict[str, float] = {}
        for name, (fn, weight) in self.terms.items():
            value = fn(pred, target)
            parts[name] = float(value.detach())
            total = total + weight * value
        return total, parts

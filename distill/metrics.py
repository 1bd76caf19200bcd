"""Image-quality metrics as the papers' code computes them.

PSNR is computed per image on [0, 1] and then averaged (not on the pooled MSE of a batch); SSIM uses an
11x11 Gaussian window with sigma 1.5 (torchmetrics' defaults, as in the MAI evaluation code).
"""
from __future__ import annotations

import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over the batch of per-image PSNR in dB for images in [0, 1]."""
    pred = pred.clamp(0, 1)
    per_image = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return float(per_image.mean())


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM (Gaussian 11x11, sigma 1.5) for images in [0, 1].

    Images too small for that window (PyNET's coarsest level is 1/32 of the input) use the largest odd
    uniform window that fits, so every level gets a score; the papers' figures are all at full size.
    """
    side = min(pred.shape[-2:])
    if side > 11:
        return float(structural_similarity_index_measure(pred.clamp(0, 1), target, data_range=1.0))
    if side < 3:
        return float("nan")
    kernel = side - 1 if side % 2 == 0 else side
    return float(structural_similarity_index_measure(pred.clamp(0, 1), target, data_range=1.0,
                                                     gaussian_kernel=False, kernel_size=kernel))


def ms_ssim_betas(height: int, width: int, kernel_size: int = 11) -> tuple[float, ...]:
    """The standard 5-scale MS-SSIM weights, truncated (and renormalised) to what the image size allows.

    Each scale halves the image and the 11-px window must still fit, so a 64-px patch supports 3 scales;
    the papers train on 256-px patches where all 5 fit.
    """
    full = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    scales = 1
    side = min(height, width)
    while scales < len(full) and side // (2**scales) > kernel_size - 1:
        scales += 1
    kept = full[:scales]
    total = sum(kept)
    return tuple(b / total for b in kept)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Differentiable MS-SSIM with as many scales as the image size allows."""
    betas = ms_ssim_betas(pred.shape[-2], pred.shape[-1])
    return multiscale_structural_similarity_index_measure(
        pred, target, data_range=1.0, betas=betas, normalize="relu"
    )

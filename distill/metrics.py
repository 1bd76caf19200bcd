"""Image-quality metrics as the papers' code computes them, and the centre crops they are scored on.

PSNR is computed per image on [0, 1] and then averaged (not on the pooled MSE of a batch); SSIM uses an
11x11 Gaussian window with sigma 1.5 (torchmetrics' defaults, as in the MAI evaluation code).  This is
the one place those formulas live: ``psnr``/``ssim`` score a model against the ground truth (torch),
``psnr_db`` compares two outputs (an exported model's against PyTorch's, int8 against fp32) on any
arrays, and ``centre_crop_pair`` cuts the held-out region every stage and benchmark scores.
"""
from __future__ import annotations

import teachers.torch_compat  # noqa: F401  (before torchmetrics: torchvision on CPU torch, see that module)

# isort: split
from collections.abc import Sequence
from typing import TypeVar, cast

import numpy as np
import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

PSNR_CAP_DB = 100.0  # identical outputs: a finite number keeps means and MLflow plots usable
Image = TypeVar("Image", np.ndarray, torch.Tensor)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over the batch of per-image PSNR in dB for images in [0, 1]."""
    pred = pred.clamp(0, 1)
    per_image = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return float(per_image.mean())


def psnr_db(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float = 1.0) -> float:
    """Mean over images of per-image PSNR (the papers' convention), capped at ``PSNR_CAP_DB``.

    For comparing two outputs (parity, int8 vs fp32, fake quant vs float), so neither side is clamped
    and identical outputs give the cap, not infinity.  Arrays or CPU tensors ``(N, ...)``; a single
    3-D image counts as a batch of one.  Computed in float64.
    """
    a, b = (np.asarray(t.detach().cpu().double() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
            for t in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs equal shapes; got {a.shape} and {b.shape}")
    if a.ndim <= 3:
        a, b = a[None], b[None]
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        per_image = 10.0 * np.log10(data_range**2 / mse)
    return float(np.minimum(per_image, PSNR_CAP_DB).mean())


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM (Gaussian 11x11, sigma 1.5) for images in [0, 1].

    Images too small for that window (PyNET's coarsest level is 1/32 of the input) use the largest odd
    uniform window that fits, so every level gets a score; the papers' figures are all at full size.
    """
    side = min(pred.shape[-2:])
    if side > 11:
        return float(cast(torch.Tensor, structural_similarity_index_measure(pred.clamp(0, 1), target, data_range=1.0)))
    if side < 3:
        return float("nan")
    kernel = side - 1 if side % 2 == 0 else side
    return float(cast(torch.Tensor, structural_similarity_index_measure(pred.clamp(0, 1), target, data_range=1.0,
                                                                        gaussian_kernel=False, kernel_size=kernel)))


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


def centre_crop_box(shape: Sequence[int], size: Sequence[int]) -> tuple[int, int]:
    """Top-left corner ``(y, x)`` of the centred ``size`` (h, w) window in an image of ``shape`` (..., H, W)."""
    (height, width), (h, w) = shape[-2:], size
    return (height - h) // 2, (width - w) // 2


def centre_crop_pair(raw: Image, rgb: Image, size: Sequence[int]) -> tuple[Image, Image]:
    """The centred ``size`` (h, w) crop of packed RAW ``(..., H, W)`` and the RGB ``(..., 2H, 2W)`` it covers.

    Held-out images are scored on centre crops so every stage and benchmark sees the same pixels.
    """
    h, w = size
    y, x = centre_crop_box(raw.shape, size)
    return raw[..., y : y + h, x : x + w], rgb[..., 2 * y : 2 * (y + h), 2 * x : 2 * (x + w)]


def centre_crop_to_multiple(raw: Image, rgb: Image, multiple: int = 32) -> tuple[Image, Image]:
    """The largest centred crop whose packed sides are multiples of ``multiple`` (32: every model in the
    zoo accepts it, PyNET's five poolings and MobileNetV2's stride 32): a (nearly) whole held-out image."""
    return centre_crop_pair(raw, rgb, [side // multiple * multiple for side in raw.shape[-2:]])

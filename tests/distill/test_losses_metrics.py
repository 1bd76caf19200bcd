import math

import pytest
import torch

from distill.losses import WeightedLoss, charbonnier, get_loss
from distill.metrics import ms_ssim, ms_ssim_betas, psnr, ssim


def test_psnr_is_per_image_then_averaged() -> None:
    target = torch.zeros(2, 3, 8, 8)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr(pred, target) == pytest.approx(30.0, abs=1e-3)  # pooled MSE would give ~23 dB


def test_ssim_of_identical_images_is_one_and_drops_with_noise() -> None:
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert ssim((x + 0.2 * torch.randn_like(x)).clamp(0, 1), x) < 0.9


def test_ms_ssim_scales_follow_image_size() -> None:
    assert len(ms_ssim_betas(256, 256)) == 5
    assert len(ms_ssim_betas(64, 64)) == 3
    assert sum(ms_ssim_betas(64, 64)) == pytest.approx(1.0)
    x = torch.rand(1, 3, 64, 64)
    assert float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-5)


def test_charbonnier_hand_value() -> None:
    pred, target = torch.tensor([0.0, 3.0]), torch.tensor([0.0, 0.0])
    expected = (math.sqrt(1e-6) + math.sqrt(9 + 1e-6)) / 2
    assert float(charbonnier(pred, target)) == pytest.approx(expected, rel=1e-6)


def test_weighted_loss_sums_terms_and_reports_each() -> None:
    pred, target = torch.full((1, 3, 16, 16), 0.5), torch.zeros(1, 3, 16, 16)
    total, parts = WeightedLoss({"l1": 2.0, "mse": 1.0})(pred, target)
    assert parts == pytest.approx({"l1": 0.5, "mse": 0.25})
    assert float(total) == pytest.approx(2 * 0.5 + 0.25)


def test_unknown_loss_lists_known_names() -> None:
    with pytest.raises(KeyError, match="known: charbonnier"):
        get_loss("perceptual_v9")

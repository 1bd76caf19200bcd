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


# --- hand-computed values for every named loss, each through get_loss(name) -------------------------

C1 = 0.01**2  # (k1 * data_range)^2 with data_range 1.0


def _const(value: float, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.full((1, 3, size, size), value, dtype=dtype)


def test_l1_and_mse_hand_values() -> None:
    pred = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    target = torch.zeros(2, 2)
    assert float(get_loss("l1")(pred, target)) == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert float(get_loss("mse")(pred, target)) == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_cosine_orthogonal_parallel_and_sixty_degrees() -> None:
    # (B=1, C=2, H=1, W=3): per position the channel vectors are orthogonal (1 - 0), parallel with
    # different lengths (1 - 1) and 60 degrees apart (1 - 0.5).
    pred = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]).reshape(1, 2, 1, 3)
    target = torch.tensor([[0.0, 2.0, 1.0], [1.0, 2.0, math.sqrt(3.0)]]).reshape(1, 2, 1, 3)
    assert float(get_loss("cosine")(pred, target)) == pytest.approx((1.0 + 0.0 + 0.5) / 3, abs=1e-6)
    assert float(get_loss("cosine")(pred, -pred)) == pytest.approx(2.0, abs=1e-6)  # antiparallel


# Constant images: variances and covariance are 0, so contrast/structure = C2/C2 = 1 and SSIM is the
# luminance term (2ab + C1) / (a^2 + b^2 + C1).  Values are dyadic (0.25, 0.5) so float32 squares are
# exact: with 0.2/0.6, E[x^2] - mu^2 cancels badly in float32 and SSIM is off by ~1e-4 (float64 is
# exact to 1e-9, checked below too).
def _luminance(a: float, b: float) -> float:
    return (2 * a * b + C1) / (a * a + b * b + C1)


def test_ssim_loss_on_constant_images() -> None:
    loss = get_loss("ssim")
    expected = 1.0 - _luminance(0.25, 0.5)  # = 0.0625 / 0.3126
    assert expected == pytest.approx(0.199936, abs=1e-6)
    assert float(loss(_const(0.25, 32), _const(0.5, 32))) == pytest.approx(expected, abs=1e-6)
    assert float(loss(_const(0.25, 32), _const(0.25, 32))) == pytest.approx(0.0, abs=1e-6)
    f64 = float(loss(_const(0.2, 32, torch.float64), _const(0.6, 32, torch.float64)))
    assert f64 == pytest.approx(1.0 - _luminance(0.2, 0.6), abs=1e-9)


def test_ms_ssim_loss_on_constant_images() -> None:
    # torchmetrics' MS-SSIM = prod_j cs_j^beta_j over the first scales times ssim^beta_last at the last
    # one (relu-normalised, a no-op for these positive values).  For constant images every cs_j = 1 and
    # 2x2 average pooling keeps the image constant, so only the last scale's luminance term survives:
    # 64 px supports 3 scales, betas (0.0448, 0.2856, 0.3001) / 0.6305.
    loss = get_loss("ms_ssim")
    last_beta = 0.3001 / 0.6305
    assert ms_ssim_betas(64, 64)[-1] == pytest.approx(last_beta)
    expected = 1.0 - _luminance(0.25, 0.5) ** last_beta
    assert expected == pytest.approx(0.100730, abs=1e-6)  # the hand value, for reading
    assert float(loss(_const(0.25, 64), _const(0.5, 64))) == pytest.approx(expected, abs=1e-6)
    f64 = float(loss(_const(0.2, 64, torch.float64), _const(0.6, 64, torch.float64)))
    # 1e-7, not 1e-9: torchmetrics builds the betas tensor in float32 even for float64 images.
    assert f64 == pytest.approx(1.0 - _luminance(0.2, 0.6) ** last_beta, abs=1e-7)


def test_histogram_is_registered_and_opposite_constants_give_two() -> None:
    loss = get_loss("histogram")
    # All mass in bin 0 vs all mass in the last bin: |1 - 0| + |0 - 1| = 2, the maximum.
    assert float(loss(_const(0.0, 8), _const(1.0, 8))) == pytest.approx(2.0)
    assert float(loss(_const(0.3, 8), _const(0.3, 8))) == pytest.approx(0.0)


def test_histogram_halfway_value_splits_mass_evenly() -> None:
    from distill.losses import soft_histogram

    # bins=5: centres 0, .25, .5, .75, 1; 0.375 is halfway between centres 1 and 2.
    hist = soft_histogram(torch.full((1, 1, 4, 4), 0.375), bins=5)
    assert hist[0, 0].tolist() == pytest.approx([0.0, 0.5, 0.5, 0.0, 0.0])
    # Default 64 bins (centres k/63): 10.5/63 vs 10/63 puts 0.5 + 0.5 against 1 in bin 10 -> L1 = 1.
    loss = get_loss("histogram")
    assert float(loss(_const(10.5 / 63, 4), _const(10 / 63, 4))) == pytest.approx(1.0, abs=1e-5)


def test_histogram_two_pixel_hand_case_and_clamping() -> None:
    loss = get_loss("histogram")
    # pred pixels 2.25/63 and 3/63: bin2 gets .75/2, bin3 gets (.25 + 1)/2 -> (.375, .625);
    # target pixels 2/63 and 3/63 -> (.5, .5); L1 = .125 + .125.
    pred = torch.tensor([2.25 / 63, 3 / 63]).reshape(1, 1, 1, 2)
    target = torch.tensor([2 / 63, 3 / 63]).reshape(1, 1, 1, 2)
    assert float(loss(pred, target)) == pytest.approx(0.25, abs=1e-5)
    # Out-of-range values are clamped into the end bins.
    assert float(loss(torch.tensor([-0.3, 1.7]).reshape(1, 1, 1, 2),
                      torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2))) == pytest.approx(0.0)


def test_histogram_is_mean_over_batch_and_channels() -> None:
    # Batch of 2, 2 channels: only image 1 channel 1 differs (0 vs 1 -> 2); mean over 4 = 0.5.
    pred = torch.zeros(2, 2, 4, 4)
    target = torch.zeros(2, 2, 4, 4)
    target[1, 1] = 1.0
    assert float(get_loss("histogram")(pred, target)) == pytest.approx(0.5)


def test_histogram_loss_is_differentiable() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 16, 16, generator=gen).requires_grad_(True)
    target = torch.rand(2, 3, 16, 16, generator=gen)
    get_loss("histogram")(pred, target).backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    # Away from the kinks the soft histogram is piecewise linear: finite differences agree.
    from distill.losses import colour_histogram_loss

    small = torch.rand(1, 2, 2, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    ref = torch.rand(1, 2, 2, 3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: colour_histogram_loss(x, ref, bins=8), (small,))


def test_normalised_mse_ignores_magnitude_per_sample_and_keeps_pattern() -> None:
    nmse = get_loss("nmse")
    a = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]], [[[2.0, 0.0], [0.0, 2.0]]]])
    scaled = a * torch.tensor([10.0, 0.5]).view(2, 1, 1, 1)  # each sample its own scale
    assert float(nmse(scaled, a)) == pytest.approx(0.0, abs=1e-9)
    # unit RMS: [1,-1,1,-1] vs [1,1,-1,-1] differ by 2 in two of four places -> 2.0; the second sample
    # [sqrt2,0,0,sqrt2] vs itself -> 0; the batch mean is 1.0, whatever the plain MSE says
    b = torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]], [[[2.0, 0.0], [0.0, 2.0]]]]) * 3.0
    assert float(nmse(a, b)) == pytest.approx(1.0, abs=1e-6)
    assert float(torch.nn.functional.mse_loss(a, b)) != pytest.approx(1.0)

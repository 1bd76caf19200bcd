"""Unprocessing: the inverse steps invert their forward versions, cameras are drawn as in Brooks et
al., and the synthetic RAW is reproducible, in range and physically sensible."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from distill.data.bayer import PATTERNS, pack_bayer
from distill.data.unprocess import (
    CameraModel,
    gamma_compression,
    gamma_expansion,
    inverse_smoothstep,
    smoothstep,
    unprocess,
)

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _photo(seed: int = 0, shape: tuple[int, int] = (16, 24)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(*shape, 3))


def test_tone_curve_and_gamma_invert_their_forward_versions() -> None:
    x = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(inverse_smoothstep(smoothstep(x)), x, atol=1e-9)
    np.testing.assert_allclose(smoothstep(inverse_smoothstep(x)), x, atol=1e-9)
    y = np.linspace(0.01, 1.0, 1000)
    np.testing.assert_allclose(gamma_compression(gamma_expansion(y)), y, rtol=1e-9)
    np.testing.assert_allclose(gamma_expansion(gamma_compression(y)), y, rtol=1e-9)
    assert inverse_smoothstep(np.array(0.5)) == pytest.approx(0.5)


def test_camera_sample_is_seeded_and_in_the_paper_ranges() -> None:
    cams = [CameraModel.sample(np.random.default_rng(s)) for s in range(50)]
    assert CameraModel.sample(np.random.default_rng(3)) == cams[3]
    assert cams[0] != cams[1]
    for cam in cams:
        np.testing.assert_allclose(cam.matrix.sum(axis=1), 1.0, rtol=1e-12)  # grey stays grey
        assert 1.9 <= cam.red_gain <= 2.4 and 1.5 <= cam.blue_gain <= 1.9
        assert 0.5 < cam.rgb_gain < 2.5
        assert 1e-4 <= cam.shot_noise <= 0.012
        assert 0 < cam.read_noise < cam.shot_noise  # read variance lies well below shot variance
    with pytest.raises(dataclasses.FrozenInstanceError):
        cams[0].red_gain = 2.0  # type: ignore[misc]


def test_unprocess_is_deterministic_per_seed() -> None:
    image = _photo()
    cam = CameraModel.sample(np.random.default_rng(1))
    a = unprocess(image, cam, rng=np.random.default_rng(7))
    b = unprocess(image, cam, rng=np.random.default_rng(7))
    c = unprocess(image, cam, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Without an rng the noise is seeded from the camera: reproducible, and camera-specific.
    np.testing.assert_array_equal(unprocess(image, cam), unprocess(image, cam))
    other = CameraModel.sample(np.random.default_rng(2))
    assert not np.array_equal(unprocess(image, cam), unprocess(image, other))


def test_unprocess_output_is_a_float32_mosaic_in_unit_range() -> None:
    image = _photo(shape=(32, 48))
    for seed in range(5):
        rng = np.random.default_rng(seed)
        out = unprocess(image, CameraModel.sample(rng), rng=rng)
        assert out.shape == (32, 48) and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        unprocess(image[..., 0], CameraModel.sample(np.random.default_rng(0)))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_grey_stays_grey_once_white_balance_is_undone(pattern: str) -> None:
    """Rows of the colour matrix sum to 1, so grey only picks up the white-balance and exposure gains;
    multiplying them back must give one linear grey level at every site."""
    cam = CameraModel.sample(np.random.default_rng(11))
    mosaic = unprocess(np.full((8, 8, 3), 0.5), cam, pattern=pattern, add_noise=False)
    b, gb, r, gr = np.moveaxis(pack_bayer(mosaic, pattern), -1, 0)
    balanced = np.stack([b * cam.blue_gain, gb, r * cam.red_gain, gr]) * cam.rgb_gain
    np.testing.assert_allclose(balanced, 0.5**2.2, rtol=1e-5)  # inverse smoothstep(0.5) == 0.5
    assert r.mean() < gb.mean() and b.mean() < gb.mean()  # a RAW looks green before white balance


def test_clipped_highlights_stay_clipped() -> None:
    """The safe gain inversion keeps pure white at full scale instead of dimming it to a colour."""
    cam = CameraModel.sample(np.random.default_rng(5))
    np.testing.assert_array_equal(unprocess(np.ones((4, 4, 3)), cam, add_noise=False), 1.0)


def test_same_colour_packs_the_same_whatever_the_pattern() -> None:
    cam = CameraModel.sample(np.random.default_rng(4))
    flat = np.broadcast_to(np.array([0.7, 0.4, 0.2]), (6, 6, 3))
    packed = [pack_bayer(unprocess(flat, cam, pattern=p, add_noise=False), p) for p in PATTERNS]
    for other in packed[1:]:
        np.testing.assert_array_equal(other, packed[0])


def test_noise_follows_the_shot_plus_read_variance() -> None:
    cam = CameraModel(rgb_to_cam=IDENTITY, red_gain=1.0, blue_gain=1.0, rgb_gain=1.0,
                      shot_noise=0.01, read_noise=0.0005)
    flat = np.full((256, 256, 3), 0.7)
    clean = unprocess(flat, cam, add_noise=False).astype(np.float64)
    noisy = unprocess(flat, cam, rng=np.random.default_rng(0)).astype(np.float64)
    level = clean.mean()
    np.testing.assert_allclose(clean, level, rtol=1e-6)
    residual = noisy - clean
    assert abs(residual.mean()) < 1e-3
    assert residual.var() == pytest.approx(level * 0.01 + 0.0005, rel=0.03)

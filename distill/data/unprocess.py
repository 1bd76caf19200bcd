"""Turn sRGB photos into plausible RAW Bayer mosaics ("unprocessing", Brooks et al., CVPR 2019).

A camera ISP roughly does: white balance & digital gain -> colour correction (camera -> sRGB) ->
gamma -> tone curve.  Running those steps backwards on an ordinary photo, with a camera drawn at
random, gives RAW/sRGB training pairs without owning a sensor.  The constants (four XYZ->camera
matrices, gain ranges, noise model) are those of the paper's reference code
(google-research/unprocessing), so data made here matches what that code would make.
"""
from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np

from distill.data.bayer import mosaic_rgb

# XYZ -> camera matrices of four real cameras, from the paper's reference code.
XYZ_TO_CAMS = np.array(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.613, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.838, -0.263, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.097, 0.1581, 0.5181]],
    ]
)
# Linear sRGB (D65) -> XYZ.
RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
GAMMA = 2.2
# Above this mean intensity the inverse white balance is faded out so that clipped highlights stay
# clipped in every channel instead of turning into coloured, dimmed blobs.
HIGHLIGHT_INFLECTION = 0.9


@dataclass(frozen=True)
class CameraModel:
    """One random camera: colour response, white balance, exposure and sensor noise.

    ``shot_noise`` and ``read_noise`` are the coefficients of the noise *variance*
    ``shot_noise * x + read_noise`` of a pixel with linear value ``x`` (the paper's convention).
    """

    rgb_to_cam: tuple[tuple[float, float, float], ...]
    red_gain: float
    blue_gain: float
    rgb_gain: float
    shot_noise: float
    read_noise: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> CameraModel:
        """Draw a camera as the paper does: a random convex mix of the real XYZ->camera matrices,
        rows normalised so grey stays grey, white-balance gains red U(1.9, 2.4) and blue U(1.5, 1.9),
        brightening 1 / N(0.8, 0.1), and log-uniform shot noise with read noise on the fitted line."""
        weights = rng.uniform(1e-8, 1e8, size=(len(XYZ_TO_CAMS), 1, 1))
        xyz_to_cam = (XYZ_TO_CAMS * weights).sum(axis=0) / weights.sum()
        rgb_to_cam = xyz_to_cam @ RGB_TO_XYZ
        rgb_to_cam = rgb_to_cam / rgb_to_cam.sum(axis=-1, keepdims=True)

        # Guard the (8-sigma) tail of the normal so the gain stays positive and finite.
        rgb_gain = 1.0 / max(float(rng.normal(0.8, 0.1)), 0.1)
        red_gain = float(rng.uniform(1.9, 2.4))
        blue_gain = float(rng.uniform(1.5, 1.9))

        log_shot = float(rng.uniform(np.log(0.0001), np.log(0.012)))
        log_read = 2.18 * log_shot + 1.20 + float(rng.normal(0.0, 0.26))
        return cls(
            rgb_to_cam=tuple((float(r), float(g), float(b)) for r, g, b in rgb_to_cam),
            red_gain=red_gain,
            blue_gain=blue_gain,
            rgb_gain=rgb_gain,
            shot_noise=float(np.exp(log_shot)),
            read_noise=float(np.exp(log_read)),
        )

    @property
    def matrix(self) -> np.ndarray:
        """``rgb_to_cam`` as a (3, 3) float64 array."""
        return np.asarray(self.rgb_to_cam, dtype=np.float64)

    def noise_seed(self) -> np.ndarray:
        """Seed words derived from the camera itself, for a reproducible noise draw without an rng."""
        values = np.array([v for row in self.rgb_to_cam for v in row] + list(astuple(self)[1:]), dtype=np.float64)
        return np.frombuffer(values.tobytes(), dtype=np.uint32)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """The paper's global tone curve ``3x^2 - 2x^3`` (kept for tests and forward simulation)."""
    x = np.clip(x, 0.0, 1.0)
    return 3.0 * x**2 - 2.0 * x**3


def inverse_smoothstep(y: np.ndarray) -> np.ndarray:
    """Exact inverse of ``smoothstep`` on [0, 1]."""
    y = np.clip(y, 0.0, 1.0)
    return 0.5 - np.sin(np.arcsin(1.0 - 2.0 * y) / 3.0)


def gamma_compression(x: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """Linear -> display values with a plain power law (the paper's sRGB approximation)."""
    return np.maximum(x, 1e-8) ** (1.0 / gamma)


def gamma_expansion(y: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """Display -> linear values; the floor avoids 0 ** p trouble exactly as the reference code does."""
    return np.maximum(y, 1e-8) ** gamma


def safe_invert_gains(linear: np.ndarray, camera: CameraModel) -> np.ndarray:
    """Undo white balance and digital gain, fading the inversion out near white so highlights that
    were clipped in the photo stay clipped (the paper's highlight-preserving inversion)."""
    gains = np.array([1.0 / camera.red_gain, 1.0, 1.0 / camera.blue_gain]) / camera.rgb_gain
    grey = linear.mean(axis=-1, keepdims=True)
    mask = (np.maximum(grey - HIGHLIGHT_INFLECTION, 0.0) / (1.0 - HIGHLIGHT_INFLECTION)) ** 2
    safe_gains = np.maximum(mask + (1.0 - mask) * gains, gains)
    return linear * safe_gains


def unprocess(
    srgb: np.ndarray,
    camera: CameraModel,
    pattern: str = "RGGB",
    rng: np.random.Generator | None = None,
    add_noise: bool = True,
) -> np.ndarray:
    """sRGB ``(H, W, 3)`` in [0, 1] -> RAW Bayer mosaic ``(H, W)`` float32 in [0, 1].

    Steps: inverse tone curve, inverse gamma, sRGB -> camera colours, inverse white balance and gain,
    clip, mosaic on ``pattern``, then shot + read noise (Gaussian with the Poisson-Gaussian variance)
    and a final clip.  Noise comes from ``rng``; without one it is seeded from the camera so the
    result is still reproducible.  H and W must be even.
    """
    if srgb.ndim != 3 or srgb.shape[-1] != 3:
        raise ValueError(f"unprocess needs an (H, W, 3) sRGB image; got shape {srgb.shape}")
    image = np.asarray(srgb, dtype=np.float64)
    image = inverse_smoothstep(image)
    image = gamma_expansion(image)
    image = image @ camera.matrix.T
    image = safe_invert_gains(image, camera)
    image = np.clip(image, 0.0, 1.0)
    mosaic = mosaic_rgb(image, pattern)
    if add_noise:
        rng = rng if rng is not None else np.random.default_rng(camera.noise_seed())
        variance = mosaic * camera.shot_noise + camera.read_noise
        mosaic = mosaic + rng.standard_normal(mosaic.shape) * np.sqrt(variance)
    return np.clip(mosaic, 0.0, 1.0).astype(np.float32)

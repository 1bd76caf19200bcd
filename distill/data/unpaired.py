"""RAW without targets, for the teacher to label (unpaired distillation).

A phone records far more RAW than anyone aligns with a DSLR; a teacher can label that RAW and the
student learn from the labels.  Without such a corpus here, :class:`UnpairedRaw` makes the stand-in
honestly available: **extra RAW of the training scenes, not new scenes**.  Every patch is a crop of a
*training* photo's sRGB, unprocessed again (``distill.data.embedded.make_pair``) with a fresh draw of
white balance, exposure and noise -- and, without ``sensor``, of the whole camera (colour matrix
too) -- so the RAW is new to the student, while its sRGB is dropped: only the teacher's output
supervises it.  Held-out photos are refused by name, so the unpaired term cannot leak them.

Batch ``index`` is a pure function of ``(seed, index, rank)``: a resumed run draws exactly the RAW an
uninterrupted one would, and each DDP rank its own.  Nothing is pre-rendered (each patch is unprocessed
on its own: the per-pixel steps commute with cropping), so a large training set costs no memory.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distill.data.embedded import EVAL_PHOTOS, SENSOR_STREAM, RawRgbPair, make_pair
from distill.data.errors import DataError
from distill.data.scenes import HELD_OUT_SCENES
from distill.data.unprocess import CameraModel

UNPAIRED_STREAM = 30_000  # rng stream of the unpaired RAW, apart from the datasets' own streams
HELD_OUT_NAMES = frozenset(EVAL_PHOTOS) | frozenset(HELD_OUT_SCENES)


class UnpairedRaw:
    """Packed RAW patches ``(4, p, p)`` float32 in [0, 1] re-rendered from training images' sRGB.

    ``images``: training pairs (their ``rgb`` is used) or sRGB arrays ``(H, W, 3)`` in [0, 1]; images smaller
    than ``2 * patch_size`` RGB pixels are skipped.  ``sensor`` keeps one colour matrix (the training data's
    phone: only exposure, white balance and noise are new); without it each patch has its own camera model.
    """

    def __init__(self, images: Sequence[RawRgbPair | np.ndarray], patch_size: int, seed: int = 0,
                 pattern: str = "RGGB", sensor: CameraModel | None = None) -> None:
        if patch_size < 1:
            raise DataError(f"unpaired RAW patches need patch_size >= 1; got {patch_size}")
        side = 2 * patch_size
        self.images: list[np.ndarray] = []
        for image in images:
            if isinstance(image, RawRgbPair):
                if image.name.split("#")[0] in HELD_OUT_NAMES:
                    raise DataError(f"unpaired RAW is made from training photos only; {image.name!r} is held out")
                image = image.rgb.transpose(1, 2, 0)
            if image.ndim != 3 or image.shape[2] != 3:
                raise DataError(f"unpaired RAW needs sRGB images (H, W, 3); got {image.shape}")
            if image.shape[0] >= side and image.shape[1] >= side:
                self.images.append(np.asarray(image, dtype=np.float32))
        if not self.images:
            raise DataError(f"no training image is at least {side}x{side} RGB pixels for {patch_size}-pixel "
                            "unpaired RAW patches")
        self.patch_size, self.seed, self.pattern, self.sensor = patch_size, seed, pattern, sensor

    def patch(self, rng: np.random.Generator) -> np.ndarray:
        """One packed RAW patch: a random image, an even-aligned crop, a fresh camera draw."""
        srgb = self.images[int(rng.integers(len(self.images)))]
        side = 2 * self.patch_size
        top = 2 * int(rng.integers((srgb.shape[0] - side) // 2 + 1))
        left = 2 * int(rng.integers((srgb.shape[1] - side) // 2 + 1))
        crop = srgb[top : top + side, left : left + side]
        return make_pair(crop, "unpaired", rng, self.pattern, sensor=self.sensor).raw

    def batch(self, index: int, size: int, rank: int = 0) -> np.ndarray:
        """Batch ``index`` of ``size`` patches ``(size, 4, p, p)``: the same arrays for the same arguments."""
        rng = np.random.default_rng([self.seed, UNPAIRED_STREAM, index, rank])
        return np.stack([self.patch(rng) for _ in range(size)])


def embedded_sensor(seed: int) -> CameraModel:
    """The sensor (colour matrix) ``load_embedded(..., seed=seed)`` renders every photo with: the one phone."""
    return CameraModel.sample(np.random.default_rng([seed, SENSOR_STREAM]))

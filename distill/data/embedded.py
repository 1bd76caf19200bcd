"""The default dataset: real photographs bundled inside scikit-image, unprocessed to RAW.

It needs no download and no dataset folder, so every recipe, test and quick experiment can run
anywhere.  Only photos that ship in the scikit-image wheel itself are used (files next to
``skimage/data/__init__.py``); they are read straight from disk, never through ``skimage.data``'s
fetchers, so nothing can reach for the network.  Synthetic images (colour wheel, logo,
chessboard, phantom) are left out: they teach an ISP nothing about real scenes.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from distill.data.bayer import pack_bayer
from distill.data.errors import DataError
from distill.data.unprocess import CameraModel, unprocess

# name -> file inside skimage/data.  Motorcycle left/right are a stereo pair, so both stay in training.
PHOTO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
}
TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left",
    "motorcycle_right",
    "retina",
)
EVAL_PHOTOS: tuple[str, ...] = ("chelsea", "rocket")
# Held-out images are cropped to multiples of this many RGB pixels, so the packed RAW is a multiple
# of 16 and U-Nets pooling four times on it (five levels, as PyNET/PUNET) see whole feature maps.
EVAL_MULTIPLE = 32


@dataclass(frozen=True, eq=False)
class RawRgbPair:
    """One training/evaluation example: packed RAW ``(4, h, w)`` and its sRGB target ``(3, 2h, 2w)``,
    both float32 in [0, 1]; the packed channels are (B, Gb, R, Gr) whatever the sensor pattern."""

    raw: np.ndarray
    rgb: np.ndarray
    name: str

    def __post_init__(self) -> None:
        raw, rgb = self.raw, self.rgb
        if raw.ndim != 3 or raw.shape[0] != 4:
            raise DataError(f"{self.name}: packed RAW must be (4, h, w); got {raw.shape}")
        if rgb.shape != (3, 2 * raw.shape[1], 2 * raw.shape[2]):
            raise DataError(
                f"{self.name}: RGB target must be (3, {2 * raw.shape[1]}, {2 * raw.shape[2]}) for packed RAW "
                f"{raw.shape}; got {rgb.shape}"
            )


def skimage_data_dir() -> Path:
    """The folder of images bundled with the installed scikit-image wheel."""
    return Path(str(importlib.resources.files("skimage.data")))


def _target_size(height: int, width: int, max_side: int | None,
                 multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized h, w) and (cropped h, w): longer side <= max_side, then cut to ``multiple``."""
    scale = 1.0 if max_side is None else min(1.0, max_side / max(height, width))
    rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
    return (rh, rw), (rh - rh % multiple, rw - rw % multiple)


@functools.lru_cache(maxsize=64)
def _photo(name: str, max_side: int | None, multiple: int) -> np.ndarray:
    """Decoded, area-downscaled, centre-cropped uint8 ``(H, W, 3)`` photo (cached, read-only)."""
    path = skimage_data_dir() / PHOTO_FILES[name]
    if not path.is_file():
        raise DataError(f"embedded photo {name!r} is missing from the scikit-image install ({path})")
    img: Image.Image
    with Image.open(path) as img:
        img = img.convert("RGB")
        (rh, rw), (ch, cw) = _target_size(img.height, img.width, max_side, multiple)
        if ch == 0 or cw == 0:
            raise DataError(
                f"embedded photo {name!r} at max_side={max_side} is {rh}x{rw} pixels, smaller than the "
                f"{multiple}-pixel grid it must be cropped to; use a larger max_side"
            )
        if (rh, rw) != (img.height, img.width):
            # BOX is exact area averaging, i.e. an anti-aliased downscale.
            img = img.resize((rw, rh), Image.Resampling.BOX)
        top, left = (rh - ch) // 2, (rw - cw) // 2
        array = np.asarray(img)[top : top + ch, left : left + cw].copy()
    array.setflags(write=False)
    return array


SENSOR_STREAM = 10_000  # rng stream of the dataset's sensor, apart from the per-photo streams


def make_pair(srgb: np.ndarray, name: str, rng: np.random.Generator, pattern: str = "RGGB",
              sensor: CameraModel | None = None) -> RawRgbPair:
    """Unprocess one sRGB ``(H, W, 3)`` float image in [0, 1].

    Without ``sensor`` the whole camera is drawn from ``rng`` (Brooks et al.'s setting, for denoising).
    With it, the sensor's colour matrix is kept and only the scene-dependent parts (white balance,
    exposure, noise level) are drawn: one phone, many scenes, as in a real learned-ISP dataset, so
    the RAW -> sRGB colour mapping is learnable.
    """
    camera = CameraModel.sample(rng)
    if sensor is not None:
        camera = dataclasses.replace(camera, rgb_to_cam=sensor.rgb_to_cam)
    mosaic = unprocess(srgb, camera, pattern=pattern, rng=rng)
    raw = np.ascontiguousarray(pack_bayer(mosaic, pattern).transpose(2, 0, 1), dtype=np.float32)
    rgb = np.ascontiguousarray(srgb.transpose(2, 0, 1), dtype=np.float32)
    return RawRgbPair(raw=raw, rgb=rgb, name=name)


def load_embedded(
    split: Literal["train", "eval"],
    seed: int = 0,
    pattern: str = "RGGB",
    max_side: int | None = 256,
) -> list[RawRgbPair]:
    """RAW/sRGB pairs from the bundled photos: ``train`` (7 photos) or ``eval`` (2 held-out photos).

    One sensor (colour matrix) per seed; each photo gets its own white balance, exposure and noise from
    ``np.random.default_rng([seed, i])`` with ``i`` its position in ``PHOTO_FILES``, so a photo's RAW does not
    depend on which split or subset is loaded and the same seed always gives bit-identical arrays.  Training
    photos are cut to even sizes, held-out ones to multiples of ``EVAL_MULTIPLE`` RGB pixels.
    """
    if split not in ("train", "eval"):
        raise DataError(f"embedded data has splits 'train' and 'eval'; got {split!r}")
    if seed < 0:
        raise DataError(f"embedded data needs a non-negative seed; got {seed}")
    if max_side is not None and max_side < 2:
        raise DataError(f"max_side must be at least 2 pixels; got {max_side}")
    names = TRAIN_PHOTOS if split == "train" else EVAL_PHOTOS
    multiple = 2 if split == "train" else EVAL_MULTIPLE
    index_of = {name: i for i, name in enumerate(PHOTO_FILES)}
    sensor = CameraModel.sample(np.random.default_rng([seed, SENSOR_STREAM]))
    pairs = []
    for name in names:
        srgb = _photo(name, max_side, multiple).astype(np.float32) / 255.0
        rng = np.random.default_rng([seed, index_of[name]])
        pairs.append(make_pair(srgb, name, rng, pattern, sensor=sensor))
    return pairs

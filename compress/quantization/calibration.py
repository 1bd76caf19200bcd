"""Which RAW crops calibrate post-training quantization.

INT8 gives every activation tensor one scale, fixed from the calibration frames.  Random crops of a
few training photos can all be mid-grey sky: the dark corners and bright highlights an app will see
then fall outside the calibrated range and clip.  ``spread`` therefore visits every training image in
turn and, within an image, takes crops spread evenly over that image's brightness range (darkest to
brightest), so dark and bright scenes are both calibrated.  Crops are always from the *training*
split, never the held-out images the quality gate scores.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Selection = Literal["random", "spread"]


def calibration_crops(images: Sequence[np.ndarray], count: int, size: tuple[int, int], selection: Selection = "random",
                      seed: int = 0) -> np.ndarray:
    """``count`` crops of ``size`` (packed-RAW height, width) from CHW ``images``: NCHW float32.

    Images smaller than ``size`` are skipped; ``ValueError`` if none is large enough.  ``random`` cycles
    through the images with seeded random positions; ``spread`` is described in the module docstring.
    """
    h, w = size
    usable = [img for img in images if img.shape[1] >= h and img.shape[2] >= w]
    if not usable:
        raise ValueError(f"no training image is at least {h}x{w} packed pixels for calibration")
    if count < 1:
        raise ValueError(f"calibration needs at least one frame; got count={count}")
    if selection == "random":
        return _random(usable, count, h, w, seed)
    if selection == "spread":
        return _spread(usable, count, h, w)
    raise ValueError(f"unknown calibration selection {selection!r}; choose random or spread")


def _random(images: list[np.ndarray], count: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    frames = []
    for i in range(count):
        raw = images[i % len(images)]
        y = int(rng.integers(0, raw.shape[1] - h + 1))
        x = int(rng.integers(0, raw.shape[2] - w + 1))
        frames.append(raw[:, y : y + h, x : x + w])
    return np.stack(frames).astype(np.float32)


def _positions(length: int, crop: int) -> list[int]:
    """Crop starts every half crop, always including the last possible start."""
    starts = list(range(0, length - crop + 1, max(1, crop // 2)))
    return starts if starts[-1] == length - crop else [*starts, length - crop]


def _spread(images: list[np.ndarray], count: int, h: int, w: int) -> np.ndarray:
    """Round-robin over images; image ``i``'s ``n_i`` crops sit at brightness quantiles (j + 0.5) / n_i."""
    per_image = [count // len(images) + (i < count % len(images)) for i in range(len(images))]
    chosen: list[list[np.ndarray]] = []
    for raw, n in zip(images, per_image):
        if n == 0:
            chosen.append([])
            continue
        starts = [(y, x) for y in _positions(raw.shape[1], h) for x in _positions(raw.shape[2], w)]
        brightness = np.array([raw[:, y : y + h, x : x + w].mean() for y, x in starts])
        order = np.argsort(brightness, kind="stable")
        picks = [order[int(round((j + 0.5) / n * (len(order) - 1)))] for j in range(n)]
        chosen.append([raw[:, starts[k][0] : starts[k][0] + h, starts[k][1] : starts[k][1] + w] for k in picks])
    frames = [crops[j] for j in range(max(per_image)) for crops in chosen if j < len(crops)]
    return np.stack(frames).astype(np.float32)

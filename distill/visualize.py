"""Pictures for people: a packed RAW frame made viewable, and input | output | target grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def raw_preview(packed: np.ndarray) -> np.ndarray:
    """Packed (4, h, w) RAW in (B, Gb, R, Gr) order -> a rough (2h, 2w, 3) sRGB-looking float image.

    No demosaicking or colour matrix: per-channel grey-world gains, brightness scaled to the 99th
    percentile, gamma 1/2.2, nearest-neighbour x2. Enough to see what the network was given.
    """
    b, gb, r, gr = packed
    rgb = np.stack([r, (gb + gr) / 2.0, b], axis=-1).astype(np.float32)
    means = rgb.reshape(-1, 3).mean(0) + 1e-6
    rgb = rgb * (means.mean() / means)
    rgb = rgb / (np.percentile(rgb, 99) + 1e-6)
    rgb = np.clip(rgb, 0, 1) ** (1 / 2.2)
    return rgb.repeat(2, axis=0).repeat(2, axis=1)


def sample_grid(packed: np.ndarray, output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(H, 3W, 3) uint8: RAW preview | model output | ground truth, each (3, H, W) or (H, W, 3) in [0, 1]."""

    def hwc(x: np.ndarray) -> np.ndarray:
        return np.transpose(x, (1, 2, 0)) if x.shape[0] == 3 else x

    panels = [raw_preview(packed), hwc(output), hwc(target)]
    height = min(p.shape[0] for p in panels)
    width = min(p.shape[1] for p in panels)
    grid = np.concatenate([p[:height, :width] for p in panels], axis=1)
    return (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> Path:
    Image.fromarray(image).save(path)
    return Path(path)

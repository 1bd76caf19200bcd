"""Bayer mosaic <-> 4-channel packed RAW, in the channel order the PyNET/MAI code uses.

The PyNET / MAI21 loaders pack an RGGB-sensor frame as ``(B, Gb, R, Gr)`` taken from
``raw[1::2,1::2], raw[0::2,1::2], raw[0::2,0::2], raw[1::2,0::2]``.  We keep that order for every
pattern: the packed channels are always (B, G in B's column, R, G in R's column) -- PyNET's naming --
so a model trained on one pattern sees the same channel semantics for another pattern.
"""
from __future__ import annotations

import numpy as np

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
PACKED_ORDER = ("B", "Gb", "R", "Gr")


def colour_offsets(pattern: str) -> dict[str, tuple[int, int]]:
    """Row/column offset inside the 2x2 tile of each colour site: B, Gb (G in B's column), R, Gr."""
    pattern = pattern.upper()
    if pattern not in PATTERNS:
        raise ValueError(f"unknown Bayer pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    tile = {(0, 0): pattern[0], (0, 1): pattern[1], (1, 0): pattern[2], (1, 1): pattern[3]}
    pos = {v: k for k, v in tile.items() if v != "G"}
    r_col, b_col = pos["R"][1], pos["B"][1]
    greens = [k for k, v in tile.items() if v == "G"]
    g_in_b_col = next(k for k in greens if k[1] == b_col)  # PyNET's Gb: raw[0::2, 1::2] for RGGB
    g_in_r_col = next(k for k in greens if k[1] == r_col)  # PyNET's Gr: raw[1::2, 0::2] for RGGB
    return {"B": pos["B"], "Gb": g_in_b_col, "R": pos["R"], "Gr": g_in_r_col}


def pack_bayer(raw: np.ndarray, pattern: str = "RGGB") -> np.ndarray:
    """Mosaic ``(H, W)`` -> packed ``(H/2, W/2, 4)`` in (B, Gb, R, Gr) order; H and W must be even."""
    if raw.ndim != 2:
        raise ValueError(f"a Bayer mosaic is 2-D (H, W); got shape {raw.shape}")
    h, w = raw.shape
    if h % 2 or w % 2:
        raise ValueError(f"a Bayer mosaic needs even height and width; got {h}x{w}")
    offsets = colour_offsets(pattern)
    return np.stack([raw[dy::2, dx::2] for dy, dx in (offsets[c] for c in PACKED_ORDER)], axis=-1)


def unpack_bayer(packed: np.ndarray, pattern: str = "RGGB") -> np.ndarray:
    """Packed ``(H/2, W/2, 4)`` in (B, Gb, R, Gr) order -> mosaic ``(H, W)``; inverse of pack_bayer."""
    if packed.ndim != 3 or packed.shape[-1] != 4:
        raise ValueError(f"packed RAW is (H/2, W/2, 4); got shape {packed.shape}")
    h2, w2, _ = packed.shape
    raw = np.empty((h2 * 2, w2 * 2), dtype=packed.dtype)
    offsets = colour_offsets(pattern)
    for i, colour in enumerate(PACKED_ORDER):
        dy, dx = offsets[colour]
        raw[dy::2, dx::2] = packed[..., i]
    return raw


def mosaic_rgb(rgb: np.ndarray, pattern: str = "RGGB") -> np.ndarray:
    """Sample a linear ``(H, W, 3)`` RGB image on a Bayer grid -> mosaic ``(H, W)``."""
    h, w, _ = rgb.shape
    offsets = colour_offsets(pattern)
    channel_of = {"R": 0, "Gr": 1, "Gb": 1, "B": 2}
    raw = np.empty((h, w), dtype=rgb.dtype)
    for colour, (dy, dx) in offsets.items():
        raw[dy::2, dx::2] = rgb[dy::2, dx::2, channel_of[colour]]
    return raw


def normalise_levels(raw: np.ndarray, black_level: float, white_level: float) -> np.ndarray:
    """Integer sensor values -> float32 in [0, 1] after black-level subtraction, clipped."""
    if white_level <= black_level:
        raise ValueError(f"white level {white_level} must exceed black level {black_level}")
    out = (raw.astype(np.float32) - black_level) / float(white_level - black_level)
    return np.clip(out, 0.0, 1.0)

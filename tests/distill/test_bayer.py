"""Bayer packing: exact round trips, the packed channel semantics, and PyNET's slicing for RGGB."""
from __future__ import annotations

import numpy as np
import pytest

from distill.data.bayer import PATTERNS, mosaic_rgb, normalise_levels, pack_bayer, unpack_bayer


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pack_unpack_round_trip(pattern: str) -> None:
    raw = np.random.default_rng(0).integers(0, 1024, size=(8, 12), dtype=np.uint16)
    packed = pack_bayer(raw, pattern)
    assert packed.shape == (4, 6, 4)
    assert packed.dtype == raw.dtype
    np.testing.assert_array_equal(unpack_bayer(packed, pattern), raw)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_packed_channels_are_b_g_r_g_for_every_pattern(pattern: str) -> None:
    """A flat colour mosaicked on any pattern packs to the same (B, G, R, G) planes."""
    rgb = np.broadcast_to(np.array([0.1, 0.5, 0.9]), (6, 8, 3)).copy()
    packed = pack_bayer(mosaic_rgb(rgb, pattern), pattern)
    np.testing.assert_allclose(packed.reshape(-1, 4), np.tile([0.9, 0.5, 0.1, 0.5], (12, 1)))


def test_pynet_channel_order_for_rggb() -> None:
    """PyNET / MAI21 ``extract_bayer_channels``: B, Gb, R, Gr = raw[1::2,1::2], raw[0::2,1::2],
    raw[0::2,0::2], raw[1::2,0::2] (their "Gb" is the green in the blue *column*)."""
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8)
    pynet = np.dstack((raw[1::2, 1::2], raw[0::2, 1::2], raw[0::2, 0::2], raw[1::2, 0::2]))
    np.testing.assert_array_equal(pack_bayer(raw, "RGGB"), pynet)


def test_pack_rejects_odd_or_colour_input() -> None:
    with pytest.raises(ValueError, match="even"):
        pack_bayer(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="2-D"):
        pack_bayer(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="pattern"):
        pack_bayer(np.zeros((4, 4)), "RGBG")


def test_normalise_levels_subtracts_black_and_clips() -> None:
    out = normalise_levels(np.array([0, 64, 543, 1023, 1100], dtype=np.uint16), 64, 1023)
    np.testing.assert_allclose(out, [0.0, 0.0, 479 / 959, 1.0, 1.0], rtol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="white level"):
        normalise_levels(np.zeros(2), 10, 10)

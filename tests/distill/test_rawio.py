"""Plain sensor files and 8-bit images with numpy alone: the PNG writer, .npz metadata, bad files named."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from distill.data.rawio import RawFileError, check_output, read_array, read_mosaic, write_image, write_png


def test_png_writer_round_trips_through_pillow(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    write_png(pixels, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as img:
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), pixels)


def test_write_image_formats(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).uniform(-0.1, 1.1, (6, 8, 3)).astype(np.float32)
    expected = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(write_image(rgb.copy(), tmp_path / "a.ppm"), expected)
    assert (tmp_path / "a.ppm").read_bytes() == b"P6 8 6 255\n" + expected.tobytes()
    write_image(rgb.copy(), tmp_path / "a.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.clip(rgb, 0, 1))
    with pytest.raises(RawFileError, match=r"a\.jpg: the output is written as PNG, PPM or NPY"):
        check_output(tmp_path / "a.jpg")


def test_npz_metadata_and_16_bit_tiff(tmp_path: Path) -> None:
    raw = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    np.savez(tmp_path / "r.npz", raw=raw, channel_order=np.array(["R", "Gr", "B", "Gb"]), black_level=np.float32(8),
             white_level=np.int64(1023))
    array, meta = read_array(tmp_path / "r.npz")
    assert np.array_equal(array, raw) and meta == {"channel_order": ["R", "Gr", "B", "Gb"], "black_level": 8.0,
                                                   "white_level": 1023}
    np.savez(tmp_path / "two.npz", a=raw, b=raw)
    with pytest.raises(RawFileError, match=r"two\.npz: an \.npz needs a 'raw' array"):
        read_array(tmp_path / "two.npz")
    mosaic = np.random.default_rng(2).integers(0, 1024, (6, 10)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", mosaic)
    assert np.array_equal(read_mosaic(tmp_path / "m.tif"), mosaic)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((6, 10, 3), np.uint8))
    with pytest.raises(RawFileError, match=r"rgb\.tif: RAW must be a 2-D Bayer mosaic"):
        read_mosaic(tmp_path / "rgb.tif")

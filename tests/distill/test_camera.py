"""Camera file reading: 16-bit PNG/PGM mosaics with given levels, DNG through LibRaw (a minimal DNG
written here with tifffile), the two real sensor captures, odd sizes and every error a user can hit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from distill.data.camera import read_bayer
from distill.data.errors import DataError

REAL_RAW = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-raw"
CFA_CODES = {"R": 0, "G": 1, "B": 2}  # TIFF/EP CFAPattern colour codes


def sensor(h: int, w: int, seed: int = 0, top: int = 1023) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, top + 1, (h, w)).astype(np.uint16)


def write_pgm(path: Path, raw: np.ndarray, maxval: int = 65535) -> Path:
    h, w = raw.shape
    path.write_bytes(f"P5\n# a comment\n{w} {h}\n{maxval}\n".encode() + raw.astype(">u2").tobytes())
    return path


def write_png16(path: Path, raw: np.ndarray) -> Path:
    Image.fromarray(raw.astype(np.uint16)).save(path)
    return path


def write_dng(path: Path, raw: np.ndarray, pattern: str, black: tuple[int, int, int, int] = (64, 64, 64, 64),
              white: int = 1023) -> Path:
    """The smallest DNG LibRaw accepts: one uncompressed CFA image with the DNG tags for its layout,
    per-site black levels (BlackLevelRepeatDim 2x2), white level and a colour matrix."""
    identity = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)  # SRATIONAL 3x3 identity
    tags = [
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, tuple(CFA_CODES[c] for c in pattern), True),  # CFAPattern
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50708, "s", 0, "ispdc test camera", True),  # UniqueCameraModel
        (50713, "H", 2, (2, 2), True),  # BlackLevelRepeatDim
        (50714, "H", 4, black, True),  # BlackLevel
        (50717, "H", 1, white, True),  # WhiteLevel
        (50721, "2i", 9, identity, True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
    ]
    tifffile.imwrite(path, raw, photometric=32803, extratags=tags, metadata=None, subfiletype=0)
    return path


def expected(raw: np.ndarray, black: float | np.ndarray, white: float) -> np.ndarray:
    return np.clip((raw.astype(np.float32) - black) / (white - black), 0, 1)


# --- PNG / PGM with given levels -------------------------------------------------------------------


@pytest.mark.parametrize("writer", [write_pgm, write_png16])
def test_plain_mosaic_is_normalised_and_cropped_even(tmp_path: Path, writer) -> None:  # noqa: ANN001
    raw = sensor(7, 9)
    path = writer(tmp_path / f"m.{'pgm' if writer is write_pgm else 'png'}", raw)
    mosaic, pattern, info = read_bayer(path, pattern="grbg", black=16, white=1000)
    assert pattern == "GRBG" and mosaic.dtype == np.float32 and mosaic.shape == (6, 8)
    np.testing.assert_allclose(mosaic, expected(raw, 16, 1000)[:6, :8], atol=1e-6)
    assert info["file_size"] == [7, 9] and info["size"] == [6, 8] and "cropped 7x9 to 6x8" in info["cropped"]
    even, _, even_info = read_bayer(writer(tmp_path / f"e{path.suffix}", raw[:6, :8]), "GRBG", 16, 1000)
    assert even_info["cropped"] is None
    np.testing.assert_array_equal(even, mosaic)


def test_plain_mosaic_needs_pattern_and_levels(tmp_path: Path) -> None:
    path = write_png16(tmp_path / "m.png", sensor(4, 4))
    with pytest.raises(DataError, match=r"m\.png.*--pattern, --black, --white"):
        read_bayer(path)
    with pytest.raises(DataError, match="--white"):
        read_bayer(path, "RGGB", black=0)
    with pytest.raises(DataError, match="unknown Bayer pattern 'RGBX'"):
        read_bayer(path, "RGBX", 0, 1023)
    with pytest.raises(DataError, match="must exceed black"):
        read_bayer(path, "RGGB", 100, 100)


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere\.dng: no such file"):
        read_bayer(tmp_path / "nowhere.dng")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"bad\.png"):
        read_bayer(tmp_path / "bad.png", "RGGB", 0, 1023)
    (tmp_path / "bad.dng").write_bytes(b"II*\x00" + bytes(100))
    with pytest.raises(DataError, match=r"bad\.dng: cannot read camera RAW"):
        read_bayer(tmp_path / "bad.dng")
    (tmp_path / "short.pgm").write_bytes(b"P5 4 4 1023\n" + bytes(10))
    with pytest.raises(DataError, match=r"short\.pgm: truncated"):
        read_bayer(tmp_path / "short.pgm", "RGGB", 0, 1023)


# --- DNG through LibRaw ------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_dng_pattern_and_per_site_black_levels(tmp_path: Path, pattern: str) -> None:
    raw = sensor(37, 50, seed=1)
    black = (60, 61, 62, 63)  # one per 2x2 site, row-major
    mosaic, found, info = read_bayer(write_dng(tmp_path / "c.dng", raw, pattern, black, white=1000))
    assert found == pattern and mosaic.shape == (36, 50) and info["cropped"]
    black_map = np.tile(np.array(black, dtype=np.float32).reshape(2, 2), (19, 25))[:37, :50]
    np.testing.assert_allclose(mosaic, expected(raw, black_map, 1000)[:36], atol=1e-6)
    assert info["black"] == [60.0, 61.0, 62.0, 63.0] and info["white"] == 1000.0


def test_dng_overrides(tmp_path: Path) -> None:
    raw = sensor(24, 30, seed=2)  # LibRaw rejects frames under 22 pixels a side
    path = write_dng(tmp_path / "c.dng", raw, "RGGB")
    mosaic, pattern, info = read_bayer(path, pattern="BGGR", black=10, white=900)
    assert pattern == "BGGR" and "file says RGGB" in info["pattern_override"]
    np.testing.assert_allclose(mosaic, expected(raw, 10, 900), atol=1e-6)


# --- the real sensor captures ------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_RAW.is_dir(), reason=f"real RAW samples not found at {REAL_RAW} (outside the workspace)")
@pytest.mark.parametrize(("name", "size", "top"), [("bayer_small.png", (344, 256), 1053),
                                                   ("bayer_2592_304.pgm", (304, 2592), 959)])
def test_real_captures(name: str, size: tuple[int, int], top: int) -> None:
    mosaic, pattern, info = read_bayer(REAL_RAW / name, "GRBG", black=25, white=1023)
    assert pattern == "GRBG" and mosaic.shape == size and info["cropped"] is None
    assert info["raw_range"][1] == top
    assert mosaic.min() == 0.0 and mosaic.max() == pytest.approx(min(1.0, (top - 25) / 998), abs=1e-6)
    assert 0.02 < mosaic.mean() < 0.9  # a real scene, not a blank frame

"""Sensor data from plain files, and 8-bit sRGB images out, with numpy alone (Pillow only to read PNG/TIFF).

Read:

* 16-bit single-channel Bayer mosaics: binary PGM (P5, parsed here: Pillow would rescale a maxval such
  as 1023 to 65535), PNG and TIFF (Pillow, mode ``I;16``);
* RAW arrays in ``.npy`` / ``.npz``: a 2-D mosaic, or packed RAW ``H x W x 4`` / ``4 x H x W`` (how MAI,
  Zurich and most research code store a phone's RAW); an ``.npz`` may carry its own metadata
  (``NPZ_METADATA``).

Write: PNG (zlib + struct, no Pillow), binary PPM and ``.npy``.

These files carry no (or little) metadata, so the CFA pattern, channel order and levels come from the
caller.  The module imports nothing of the project: every hand-off bundle ships a copy of it as
``ispdc_rawio.py``, so the bundle's ``run_model.py`` and ``ispdc process`` read and write with the same code.
"""
from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

try:
    from PIL import Image
except ImportError:  # optional inside a bundle: only PNG/TIFF mosaics need it
    Image = None  # type: ignore[assignment]

MOSAIC_SUFFIXES = (".png", ".pgm", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
OUTPUT_SUFFIXES = (".png", ".ppm", ".npy")
NPZ_METADATA = ("channel_order", "cfa_pattern", "black_level", "white_level")
"""Optional ``.npz`` keys beside the array (``raw``, or the file's only other array)."""
FORMATS = ("16-bit PNG / TIFF / PGM (P5) Bayer mosaics, .npy 2-D mosaics, packed .npy / .npz RAW "
           "(H x W x 4 or 4 x H x W)")
PNG_COMPRESS_LEVEL = 1  # zlib level: 12 MP at level 6 took ~15 s to write here, at 1 a fraction of that
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B")
_PGM_TOKEN = re.compile(rb"\s*(?:#[^\n]*\n\s*)*([^\s#]+)")


class RawFileError(ValueError):
    """A file that cannot be read as sensor data; the message names the path."""


def read_pgm16(path: Path) -> np.ndarray:
    """Binary PGM (P5) with its stored values as ``(H, W)`` uint16."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RawFileError(f"{path}: cannot read RAW image ({exc})") from None
    tokens: list[bytes] = []
    pos = 0
    while len(tokens) < 4:
        match = _PGM_TOKEN.match(data, pos)
        if match is None:
            raise RawFileError(f"{path}: not a readable PGM header")
        tokens.append(match.group(1))
        pos = match.end()
    magic, width, height, maxval = tokens
    if magic != b"P5":
        raise RawFileError(f"{path}: only binary PGM (P5) is supported; the file starts with {magic[:2]!r}")
    try:
        w, h, top = int(width), int(height), int(maxval)
    except ValueError:
        raise RawFileError(f"{path}: corrupt PGM header {b' '.join(tokens)!r}") from None
    if top < 256:
        raise RawFileError(f"{path}: RAW must be 16-bit; this PGM is 8-bit (maxval {top})")
    pixels = data[pos + 1 :]  # exactly one whitespace byte follows maxval
    if len(pixels) < 2 * w * h:
        raise RawFileError(f"{path}: truncated PGM: {len(pixels)} bytes of pixel data for {w}x{h} 16-bit pixels")
    return np.frombuffer(pixels, dtype=">u2", count=w * h).reshape(h, w).astype(np.uint16)


def read_image16(path: Path) -> np.ndarray:
    """A 16-bit single-channel PNG or TIFF through Pillow as ``(H, W)`` uint16, values as stored."""
    if Image is None:
        raise RawFileError(f"{path}: reading PNG/TIFF needs Pillow (pip install pillow); or give a .npy/.pgm")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RawFileError(f"{path}: cannot read RAW image ({exc})") from None
    if array.ndim != 2:
        raise RawFileError(f"{path}: RAW must be a 2-D Bayer mosaic; got shape {array.shape} (mode {mode})")
    if mode not in _SIXTEEN_BIT_MODES:
        raise RawFileError(f"{path}: RAW must be a 16-bit image; got mode {mode} ({array.dtype}), shape {array.shape}")
    return array.astype(np.uint16, copy=False)


def read_mosaic(path: Path) -> np.ndarray:
    """A 16-bit Bayer mosaic file (PGM, or PNG/TIFF through Pillow) as ``(H, W)`` uint16."""
    path = Path(path)
    return read_pgm16(path) if path.suffix.lower() == ".pgm" else read_image16(path)


def _metadata_value(value: np.ndarray) -> Any:
    """An .npz metadata array as a plain value: a string, a number or a list of them."""
    item = value.tolist()
    if isinstance(item, bytes):
        return item.decode()
    if isinstance(item, list):
        return [v.decode() if isinstance(v, bytes) else v for v in item]
    return item


def read_array(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``.npy`` -> (array, {}); ``.npz`` -> (its ``raw`` array, or its only non-metadata array, metadata)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise RawFileError(f"{path}: cannot read the array ({exc})") from None
    if isinstance(loaded, np.ndarray):
        return loaded, {}
    with loaded:
        names = [n for n in loaded.files if n not in NPZ_METADATA]
        key = "raw" if "raw" in loaded.files else (names[0] if len(names) == 1 else None)
        if key is None:
            raise RawFileError(f"{path}: an .npz needs a 'raw' array (or exactly one array besides the metadata "
                               f"keys {', '.join(NPZ_METADATA)}); it holds {', '.join(loaded.files) or 'nothing'}")
        meta = {k: _metadata_value(loaded[k]) for k in NPZ_METADATA if k in loaded.files}
        return loaded[key], meta


def to_pixels(rgb: np.ndarray) -> np.ndarray:
    """Float sRGB ``(H, W, 3)`` in [0, 1] -> 8-bit; works in place on ``rgb`` (144 MB at 12 MP)."""
    np.clip(rgb, 0.0, 1.0, out=rgb)
    rgb *= 255.0
    rgb += 0.5
    return rgb.astype(np.uint8)


def write_png(pixels: np.ndarray, path: Path, level: int = PNG_COMPRESS_LEVEL) -> None:
    """8-bit RGB PNG, filter None on every row, one zlib stream: readable everywhere, no Pillow needed."""
    h, w, c = pixels.shape
    rows = np.empty((h, 1 + w * c), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = pixels.reshape(h, w * c)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, {3: 2, 4: 6, 1: 0}[c], 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header))
        handle.write(chunk(b"IDAT", zlib.compress(rows.data, level)))
        handle.write(chunk(b"IEND", b""))


def check_output(path: Path) -> str:
    """The output's suffix, checked before any work is done."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise RawFileError(f"{path}: the output is written as PNG, PPM or NPY; give a .png file name "
                           f"(or .ppm / .npy)")
    return suffix


def write_image(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Float sRGB ``(H, W, 3)`` -> ``path`` (.png / .ppm 8-bit, .npy float32 in [0, 1]); returns the 8-bit
    pixels (consumes ``rgb``)."""
    suffix = check_output(path)
    if suffix == ".npy":
        np.save(path, np.clip(rgb, 0.0, 1.0))
    pixels = to_pixels(rgb)
    if suffix == ".png":
        write_png(pixels, path)
    elif suffix == ".ppm":
        h, w, _ = pixels.shape
        Path(path).write_bytes(f"P6 {w} {h} 255\n".encode() + pixels.tobytes())
    return pixels

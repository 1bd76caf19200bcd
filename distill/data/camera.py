"""Real camera files -> a normalised Bayer mosaic and its CFA pattern, ready for ``pack_bayer``.

Two kinds of file:

* camera RAW (DNG, CR2, NEF, ARW, ...) through rawpy / LibRaw: the visible sensor area, the CFA order
  read from the file (``raw_pattern`` + ``color_desc``) and its per-channel black and white levels;
* 16-bit single-channel PNG, TIFF and binary PGM mosaics (``distill.data.rawio``), which carry no
  metadata: the caller must say the pattern and the black/white levels.

Both come back as float32 in [0, 1] after black subtraction, so a model sees the same scale
whatever the container.  An odd height or width is cropped by one row/column at the bottom/right
(which keeps the CFA phase) and ``info["cropped"]`` says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill.data.bayer import PATTERNS, normalise_levels
from distill.data.errors import DataError
from distill.data.loaders import read_bayer as read_mosaic_file
from distill.data.rawio import FORMATS, MOSAIC_SUFFIXES

CAMERA_FORMATS = "camera RAW through LibRaw (DNG, CR2, NEF, ARW, ...)"


def read_bayer(
    path: Path | str, pattern: str | None = None, black: float | None = None, white: float | None = None
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Read a camera file: ``(mosaic (H, W) float32 in [0, 1], CFA pattern, info)`` with even H and W.

    For PNG/TIFF/PGM ``pattern``, ``black`` and ``white`` are required.  For camera RAW they override
    what the file says (``black``/``white`` as one level for every CFA channel).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if pattern is not None and pattern.upper() not in PATTERNS:
        raise DataError(f"{path}: unknown Bayer pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    if path.suffix.lower() in MOSAIC_SUFFIXES:
        mosaic, pattern, info = _read_plain(path, pattern, black, white)
    else:
        mosaic, pattern, info = _read_camera_raw(path, pattern, black, white)
    return _finish(mosaic, pattern, info)


def _finish(mosaic: np.ndarray, pattern: str, info: dict[str, Any]) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Crop to even size (noting it in ``info``) and return the reader's triple."""
    h, w = mosaic.shape
    info["file_size"] = [h, w]
    even = mosaic[: h - h % 2, : w - w % 2]
    if even.size == 0:
        raise DataError(f"{info['path']}: mosaic of {h}x{w} pixels is too small (need at least 2x2)")
    info["cropped"] = (f"cropped {h}x{w} to {even.shape[0]}x{even.shape[1]} (a 2x2 CFA tile needs even sizes)"
                       if even.shape != mosaic.shape else None)
    info["size"] = [int(even.shape[0]), int(even.shape[1])]
    info["pattern"] = pattern
    return np.ascontiguousarray(even, dtype=np.float32), pattern, info


def _read_plain(path: Path, pattern: str | None, black: float | None,
                white: float | None) -> tuple[np.ndarray, str, dict[str, Any]]:
    """16-bit PNG/TIFF/PGM: the container has no CFA or level metadata, so the caller must give them."""
    missing = [name for name, value in (("pattern", pattern), ("black", black), ("white", white)) if value is None]
    if missing:
        raise DataError(f"{path}: a {path.suffix.lower()[1:].upper()} mosaic carries no metadata; give "
                        + ", ".join(f"--{m}" for m in missing) + " (e.g. --pattern GRBG --black 25 --white 1023)")
    assert pattern is not None and black is not None and white is not None
    raw = read_mosaic_file(path)
    if raw.ndim != 2:
        raise DataError(f"{path}: a Bayer mosaic is 2-D; got shape {raw.shape}")
    if white <= black:
        raise DataError(f"{path}: white level {white:g} must exceed black level {black:g}")
    mosaic = normalise_levels(raw, black, white)
    info = {"path": str(path), "format": path.suffix.lower()[1:],
            "black": [float(black)] * 4, "white": float(white), "raw_range": [int(raw.min()), int(raw.max())]}
    return mosaic, pattern.upper(), info


def _read_camera_raw(path: Path, pattern: str | None, black: float | None,
                     white: float | None) -> tuple[np.ndarray, str, dict[str, Any]]:
    """LibRaw's visible sensor area, CFA order and levels; overrides replace the file's values."""
    import rawpy

    try:
        with rawpy.imread(str(path)) as raw:
            visible = np.array(raw.raw_image_visible, dtype=np.uint16)
            cfa = raw.raw_pattern
            desc = raw.color_desc.decode("ascii", errors="replace")
            file_black = [float(b) for b in raw.black_level_per_channel]
            file_white = float(raw.white_level)
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read camera RAW file ({type(exc).__name__}: {exc}); the formats read are "
                        f"{CAMERA_FORMATS} and {FORMATS}") from None
    if visible.ndim != 2:
        raise DataError(f"{path}: not a single-plane Bayer RAW (LibRaw gives shape {visible.shape}; "
                        f"linear or demosaiced DNGs are not supported)")
    file_pattern, site_index = _cfa_pattern(path, cfa, desc)
    site_black = [file_black[i] for i in site_index]  # per 2x2 site, row-major
    levels = [float(black)] * 4 if black is not None else site_black
    top = float(white) if white is not None else file_white
    if top <= max(levels):
        raise DataError(f"{path}: white level {top:g} must exceed black level {max(levels):g}")
    black_map = np.asarray(levels, dtype=np.float32).reshape(2, 2)
    h, w = visible.shape
    tiled_black = np.tile(black_map, ((h + 1) // 2, (w + 1) // 2))[:h, :w]
    mosaic = np.clip((visible.astype(np.float32) - tiled_black) / (top - tiled_black), 0.0, 1.0)
    info = {"path": str(path), "format": f"camera raw ({path.suffix.lower()[1:]}, LibRaw)",
            "black": [float(b) for b in levels], "white": top, "file_black": site_black, "file_white": file_white,
            "raw_range": [int(visible.min()), int(visible.max())]}
    used = (pattern or file_pattern).upper()
    if pattern is not None and used != file_pattern:
        info["pattern_override"] = f"file says {file_pattern}, using {used} as given"
    return mosaic, used, info


def _cfa_pattern(path: Path, cfa: np.ndarray | None, desc: str) -> tuple[str, list[int]]:
    """LibRaw's 2x2 colour indices + colour description -> ``"GRBG"`` and the index of each site."""
    if cfa is None or np.asarray(cfa).shape != (2, 2):
        shape = None if cfa is None else np.asarray(cfa).shape
        raise DataError(f"{path}: not a 2x2 Bayer sensor (LibRaw CFA pattern shape {shape}); X-Trans and "
                        f"other layouts are not supported")
    indices = [int(i) for i in np.asarray(cfa).reshape(-1)]
    letters = "".join(desc[i] if i < len(desc) else "?" for i in indices)
    if sorted(letters) != ["B", "G", "G", "R"]:
        raise DataError(f"{path}: CFA colours {letters!r} (LibRaw {desc!r}) are not an RGB Bayer pattern")
    return letters, indices


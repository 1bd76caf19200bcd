"""Readers for real RAW/sRGB dataset layouts, all producing the same ``RawRgbPair``.

* Zurich RAW-to-RGB (PyNET): ``root/{train,test}/huawei_raw/N.png`` + ``root/{train,test}/canon/N.jpg``
* MAI21 / Fujifilm UltraISP: ``root/{train,val,test}/mediatek_raw/N.png`` + ``.../fujifilm/N.png``
* a generic paired folder: ``root/<split>/<raw_dir>/*.png|*.pgm`` + ``root/<split>/<rgb_dir>/<stem>.png|jpg``
  (or without the ``<split>`` level when ``split`` is empty)

Zurich and MAI21 hold 10-bit data in 16-bit PNGs and are scaled by 4 * 255 = 1020 as in the PyNET and
MAI21 reference loaders (then clipped to [0, 1]).  Folders are listed and matched up front, so layout
mistakes surface before any training; with ``lazy=True`` the images themselves are read on access,
which is what the full datasets (tens of thousands of pairs, ~3 MB each as float32) need.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
from PIL import Image

from distill.data.bayer import colour_offsets, normalise_levels, pack_bayer
from distill.data.embedded import RawRgbPair, load_embedded
from distill.data.errors import DataError
from distill.data.rawio import RawFileError, read_mosaic

PYNET_RAW_SCALE = 4 * 255
RAW_EXTENSIONS = (".png", ".pgm")
RGB_EXTENSIONS = (".png", ".jpg", ".jpeg")
_COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr")
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_SHOWN = 5  # file names listed in a mismatch message


# --------------------------------------------------------------------------- image files


def read_bayer(path: Path) -> np.ndarray:
    """A 16-bit single-channel Bayer mosaic (PNG, TIFF or binary PGM) as ``(H, W)`` uint16, values as stored."""
    try:
        return read_mosaic(Path(path))
    except RawFileError as exc:
        raise DataError(str(exc)) from None


def read_rgb(path: Path) -> np.ndarray:
    """An 8-bit colour image as ``(3, H, W)`` float32 in [0, 1]."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img.convert("RGB")) if mode in _COLOUR_MODES else None
    except _UNREADABLE as exc:
        raise DataError(f"{path}: cannot read RGB image ({exc})") from None
    if array is None:
        raise DataError(f"{path}: RGB target must be a colour image; got mode {mode}")
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def read_pair(
    name: str, raw_path: Path, rgb_path: Path, pattern: str, black_level: float, white_level: float
) -> RawRgbPair:
    """Read, check and pack one pair; the target must be exactly the mosaic's size (2x the packed RAW)."""
    mosaic = read_bayer(raw_path)
    rgb = read_rgb(rgb_path)
    h, w = mosaic.shape
    if h % 2 or w % 2:
        raise DataError(f"{raw_path}: a Bayer mosaic needs even height and width; got {h}x{w}")
    if rgb.shape[1:] != (h, w):
        raise DataError(
            f"{raw_path.name} / {rgb_path.name}: RAW mosaic {h}x{w} (packed {h // 2}x{w // 2}) does not match "
            f"RGB target {rgb.shape[1]}x{rgb.shape[2]}; the target must be exactly 2x the packed RAW "
            f"({raw_path} vs {rgb_path})"
        )
    levels = normalise_levels(mosaic, black_level, white_level)
    raw = np.ascontiguousarray(pack_bayer(levels, pattern).transpose(2, 0, 1), dtype=np.float32)
    return RawRgbPair(raw=raw, rgb=rgb, name=name)


# --------------------------------------------------------------------------- folders


class LazyPairs(Sequence[RawRgbPair]):
    """Pairs that are read from disk each time they are indexed (nothing is cached).

    Behaves like a read-only list (``len``, indexing, slicing, iteration) and pickles cheaply, so a
    DataLoader worker can read its own images.
    """

    def __init__(self, entries: Sequence[tuple[str, Path, Path]], reader: Callable[[str, Path, Path], RawRgbPair]):
        self.entries = list(entries)
        self.reader = reader

    def __len__(self) -> int:
        return len(self.entries)

    @overload
    def __getitem__(self, index: int) -> RawRgbPair: ...

    @overload
    def __getitem__(self, index: slice) -> LazyPairs: ...

    def __getitem__(self, index: int | slice) -> RawRgbPair | LazyPairs:
        if isinstance(index, slice):
            return LazyPairs(self.entries[index], self.reader)
        return self.reader(*self.entries[index])

    def __iter__(self) -> Iterator[RawRgbPair]:
        for entry in self.entries:
            yield self.reader(*entry)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.entries]

    def load(self) -> list[RawRgbPair]:
        """Read everything now."""
        return list(self)


def _sort_key(path: Path) -> tuple[int, int, str]:
    """Numeric file names (0.png, 1.png, ..., 10.png) in numeric order, others alphabetically."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        parent = path.parent
        found = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        hint = f"; {parent} has: {', '.join(found)}" if found else ""
        raise DataError(f"{what} folder {path} does not exist{hint}")
    return path


def _index(folder: Path, extensions: tuple[str, ...], what: str) -> dict[str, Path]:
    """stem -> file for the images in ``folder``; two files with one stem would make pairing ambiguous."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=_sort_key):
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        if path.stem in files:
            raise DataError(f"{what} folder {folder}: {files[path.stem].name} and {path.name} share a name; keep one")
        files[path.stem] = path
    if not files:
        raise DataError(f"{what} folder {folder} is empty: no {'/'.join(e[1:] for e in extensions)} images")
    return files


def _shown(paths: list[Path]) -> str:
    names = ", ".join(p.name for p in paths[:_SHOWN])
    return names + (f", ... ({len(paths) - _SHOWN} more)" if len(paths) > _SHOWN else "")


def _match(raws: dict[str, Path], rgbs: dict[str, Path], raw_folder: Path,
           rgb_folder: Path) -> list[tuple[str, Path, Path]]:
    only_raw = [p for stem, p in raws.items() if stem not in rgbs]
    only_rgb = [p for stem, p in rgbs.items() if stem not in raws]
    if only_raw or only_rgb:
        parts = [f"{len(raws)} RAW files in {raw_folder} vs {len(rgbs)} RGB files in {rgb_folder}"]
        if only_raw:
            parts.append(f"RAW without RGB: {_shown(only_raw)}")
        if only_rgb:
            parts.append(f"RGB without RAW: {_shown(only_rgb)}")
        raise DataError("; ".join(parts))
    return [(stem, path, rgbs[stem]) for stem, path in raws.items()]


def _load_folder(
    raw_folder: Path,
    rgb_folder: Path,
    prefix: str,
    rgb_extensions: tuple[str, ...],
    *,
    pattern: str,
    black_level: float,
    white_level: float,
    lazy: bool,
    limit: int | None,
) -> list[RawRgbPair] | LazyPairs:
    try:
        colour_offsets(pattern)
        normalise_levels(np.zeros(1, np.uint16), black_level, white_level)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    raws = _index(_folder(raw_folder, "RAW"), RAW_EXTENSIONS, "RAW")
    rgbs = _index(_folder(rgb_folder, "RGB"), rgb_extensions, "RGB")
    matched = _match(raws, rgbs, raw_folder, rgb_folder)
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be at least 1; got {limit}")
        matched = matched[:limit]
    entries = [(f"{prefix}/{stem}", raw, rgb) for stem, raw, rgb in matched]
    reader = functools.partial(read_pair, pattern=pattern, black_level=black_level, white_level=white_level)
    pairs = LazyPairs(entries, reader)
    return pairs if lazy else pairs.load()


def _split_folder(root: Path | None, split: str, kind: str) -> Path:
    if root is None:
        raise DataError(f"{kind} data needs a root folder")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{kind} dataset folder {root} does not exist")
    return _folder(root / split, f"{kind} split {split!r}") if split else root


def load_zurich(
    root: Path, split: str = "train", pattern: str = "RGGB", lazy: bool = False, limit: int | None = None
) -> list[RawRgbPair] | LazyPairs:
    """Zurich RAW-to-RGB (Huawei P20 RAW -> Canon 5D photo), 448x448 mosaics -> 224x224x4 packed."""
    folder = _split_folder(root, split, "zurich")
    return _load_folder(folder / "huawei_raw", folder / "canon", f"zurich/{split}", (".jpg", ".jpeg", ".png"),
                        pattern=pattern, black_level=0.0, white_level=PYNET_RAW_SCALE, lazy=lazy, limit=limit)


def load_mai21(
    root: Path, split: str = "train", pattern: str = "RGGB", lazy: bool = False, limit: int | None = None
) -> list[RawRgbPair] | LazyPairs:
    """MAI 2021 / Fujifilm UltraISP (MediaTek sensor RAW -> Fujifilm GFX100 photo), 256x256 mosaics."""
    folder = _split_folder(root, split, "mai21")
    return _load_folder(folder / "mediatek_raw", folder / "fujifilm", f"mai21/{split}", (".png",),
                        pattern=pattern, black_level=0.0, white_level=PYNET_RAW_SCALE, lazy=lazy, limit=limit)


def load_paired(
    root: Path,
    split: str = "",
    raw_dir: str = "raw",
    rgb_dir: str = "rgb",
    pattern: str = "RGGB",
    black_level: float = 0.0,
    white_level: float = 65535.0,
    lazy: bool = False,
    limit: int | None = None,
) -> list[RawRgbPair] | LazyPairs:
    """Any folder of 16-bit Bayer mosaics with same-named RGB targets; levels map the sensor range to [0, 1]."""
    folder = _split_folder(root, split, "paired")
    prefix = f"paired/{split}" if split else "paired"
    return _load_folder(folder / raw_dir, folder / rgb_dir, prefix, RGB_EXTENSIONS, pattern=pattern,
                        black_level=black_level, white_level=white_level, lazy=lazy, limit=limit)


_LOADERS: dict[str, Callable[..., Any]] = {"zurich": load_zurich, "mai21": load_mai21, "paired": load_paired}


def load_dataset(
    kind: Literal["embedded", "zurich", "mai21", "paired"], root: Path | None, split: str, **options: Any
) -> list[RawRgbPair] | LazyPairs:
    """Pairs of one split of a dataset; ``options`` go to the kind's loader (``load_embedded``,
    ``load_zurich``, ``load_mai21`` or ``load_paired``); ``root`` is ignored for ``embedded``."""
    if kind == "embedded":
        loader: Callable[..., Any] = load_embedded
        args: dict[str, Any] = {"split": split}
    elif kind in _LOADERS:
        loader = _LOADERS[kind]
        args = {"root": root, "split": split}
    else:
        raise DataError(f"unknown dataset kind {kind!r}; expected one of embedded, {', '.join(_LOADERS)}")
    accepted = set(inspect.signature(loader).parameters) - set(args)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DataError(f"{kind} data does not take option(s) {', '.join(unknown)}; "
                        f"it takes {', '.join(sorted(accepted))}")
    return loader(**args, **options)

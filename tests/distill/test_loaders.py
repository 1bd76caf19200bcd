"""Embedded data and the real-layout readers, on tiny files written here in the datasets' exact
formats (16-bit grey PNG mosaics, 8-bit JPG/PNG targets), plus every error a user can run into."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data.bayer import pack_bayer
from distill.data.embedded import EVAL_MULTIPLE, EVAL_PHOTOS, PHOTO_FILES, TRAIN_PHOTOS, load_embedded, skimage_data_dir
from distill.data.errors import DataError
from distill.data.loaders import LazyPairs, load_dataset, load_mai21, load_paired, load_zurich, read_bayer

REAL_RAW = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-raw"


# --------------------------------------------------------------------------- embedded


def test_embedded_photos_ship_with_scikit_image() -> None:
    """Read from the wheel's own folder, so loading can never trigger a download."""
    for name, file in PHOTO_FILES.items():
        assert (skimage_data_dir() / file).is_file(), name
    assert set(TRAIN_PHOTOS) | set(EVAL_PHOTOS) == set(PHOTO_FILES)


def test_embedded_splits_shapes_and_names() -> None:
    train, evaluation = load_embedded("train"), load_embedded("eval")
    assert [p.name for p in train] == list(TRAIN_PHOTOS)
    assert [p.name for p in evaluation] == list(EVAL_PHOTOS)
    assert not {p.name for p in train} & {p.name for p in evaluation}
    for pair in train + evaluation:
        _, h, w = pair.raw.shape
        assert pair.raw.shape[0] == 4 and pair.rgb.shape == (3, 2 * h, 2 * w)
        assert pair.raw.dtype == pair.rgb.dtype == np.float32
        assert max(pair.rgb.shape[1:]) <= 256
        assert 0.0 <= pair.raw.min() and pair.raw.max() <= 1.0 and 0.0 <= pair.rgb.min() and pair.rgb.max() <= 1.0
    for pair in evaluation:
        assert pair.rgb.shape[1] % EVAL_MULTIPLE == 0 and pair.rgb.shape[2] % EVAL_MULTIPLE == 0


def test_embedded_is_bit_identical_per_seed() -> None:
    a, b = load_embedded("eval", seed=3, max_side=64), load_embedded("eval", seed=3, max_side=64)
    c = load_embedded("eval", seed=4, max_side=64)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x.raw, y.raw)
        np.testing.assert_array_equal(x.rgb, y.rgb)
        np.testing.assert_array_equal(x.rgb, z.rgb)  # the target is the photo, whatever the camera
        assert not np.array_equal(x.raw, z.raw)


def test_embedded_options_and_dispatch() -> None:
    pairs = load_dataset("embedded", None, "train", seed=0, pattern="GRBG", max_side=64)
    assert all(max(p.rgb.shape[1:]) <= 64 for p in pairs)
    assert all(p.rgb.shape[1] % 2 == 0 and p.rgb.shape[2] % 2 == 0 for p in pairs)
    with pytest.raises(DataError, match="'train' and 'eval'"):
        load_embedded("test")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="max_side"):
        load_embedded("eval", max_side=40)  # chelsea would be 40x27 -> no whole 32-pixel row


# --------------------------------------------------------------------------- writers in the real formats


def _mosaic(seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1024, size=size, dtype=np.uint16)  # 10-bit data


def _target(seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A smooth picture (so a JPG of it stays close) with a per-seed tint."""
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    planes = (x * 200 // size[1], y * 200 // size[0], np.full(size, 40 + 20 * seed))
    return np.stack(planes, axis=-1).astype(np.uint8)


def _write_png16(path: Path, mosaic: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mosaic).save(path)  # uint16 -> mode I;16 -> 16-bit grey PNG


def _write_pgm16(path: Path, mosaic: np.ndarray, maxval: int = 1023) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = mosaic.shape
    path.write_bytes(f"P5\n# written by a test\n{w} {h}\n{maxval}\n".encode() + mosaic.astype(">u2").tobytes())


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(rgb).save(path)


def _zurich(root: Path, split: str = "train", stems: tuple[str, ...] = ("1", "2", "10")) -> dict[str, np.ndarray]:
    mosaics = {}
    for i, stem in enumerate(stems):
        mosaics[stem] = _mosaic(i)
        _write_png16(root / split / "huawei_raw" / f"{stem}.png", mosaics[stem])
        _write_rgb(root / split / "canon" / f"{stem}.jpg", _target(i))
    return mosaics


def _mai21(root: Path, split: str = "val", n: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    mosaics, targets = [], []
    for i in range(n):
        mosaics.append(_mosaic(i))
        targets.append(_target(i))
        _write_png16(root / split / "mediatek_raw" / f"{i}.png", mosaics[-1])
        _write_rgb(root / split / "fujifilm" / f"{i}.png", targets[-1])
    return mosaics, targets


def _pynet_pack(mosaic: np.ndarray) -> np.ndarray:
    return np.clip(pack_bayer(mosaic, "RGGB").transpose(2, 0, 1).astype(np.float32) / 1020, 0, 1)


# --------------------------------------------------------------------------- real layouts


def test_zurich_layout(tmp_path: Path) -> None:
    mosaics = _zurich(tmp_path)
    pairs = load_zurich(tmp_path, "train")
    assert [p.name for p in pairs] == ["zurich/train/1", "zurich/train/2", "zurich/train/10"]  # numeric order
    for pair, mosaic in zip(pairs, mosaics.values()):
        assert pair.raw.shape == (4, 16, 16) and pair.rgb.shape == (3, 32, 32)
        np.testing.assert_array_equal(pair.raw, _pynet_pack(mosaic))  # 16-bit values kept, / 4*255
    jpeg = pairs[0].rgb * 255
    assert np.abs(jpeg - _target(0).transpose(2, 0, 1)).mean() < 3  # lossy, but the same picture


def test_mai21_layout_keeps_exact_png_targets(tmp_path: Path) -> None:
    mosaics, targets = _mai21(tmp_path)
    pairs = load_dataset("mai21", tmp_path, "val")
    assert [p.name for p in pairs] == ["mai21/val/0", "mai21/val/1"]
    for pair, mosaic, target in zip(pairs, mosaics, targets):
        np.testing.assert_array_equal(pair.raw, _pynet_pack(mosaic))
        np.testing.assert_array_equal(pair.rgb, target.transpose(2, 0, 1).astype(np.float32) / 255)


def test_paired_folder_with_pgm_and_png_levels_and_pattern(tmp_path: Path) -> None:
    a, b = _mosaic(0), _mosaic(1)
    _write_pgm16(tmp_path / "train" / "bayer" / "a.pgm", a)
    _write_png16(tmp_path / "train" / "bayer" / "b.png", b)
    _write_rgb(tmp_path / "train" / "srgb" / "a.png", _target(0))
    _write_rgb(tmp_path / "train" / "srgb" / "b.jpg", _target(1))
    pairs = load_paired(tmp_path, "train", raw_dir="bayer", rgb_dir="srgb", pattern="GRBG",
                        black_level=64, white_level=1023)
    assert [p.name for p in pairs] == ["paired/train/a", "paired/train/b"]
    for pair, mosaic in zip(pairs, (a, b)):
        levels = np.clip((mosaic.astype(np.float32) - 64) / 959, 0, 1)
        np.testing.assert_allclose(pair.raw, pack_bayer(levels, "GRBG").transpose(2, 0, 1), rtol=1e-6)
    # No split level: the folders sit directly in root.
    flat = load_dataset("paired", tmp_path / "train", "", raw_dir="bayer", rgb_dir="srgb")
    assert [p.name for p in flat] == ["paired/a", "paired/b"]


def test_lazy_and_limit(tmp_path: Path) -> None:
    _zurich(tmp_path, "test")
    eager = load_zurich(tmp_path, "test")
    lazy = load_dataset("zurich", tmp_path, "test", lazy=True)
    assert isinstance(lazy, LazyPairs) and len(lazy) == 3
    assert lazy.names == [p.name for p in eager]
    np.testing.assert_array_equal(lazy[2].raw, eager[2].raw)
    assert [p.name for p in lazy[:2]] == [p.name for p in eager[:2]]
    assert [p.name for p in load_zurich(tmp_path, "test", limit=2)] == ["zurich/test/1", "zurich/test/2"]


@pytest.mark.skipif(not REAL_RAW.is_dir(), reason="shared real sensor captures not present")
def test_reads_real_sensor_files_with_their_stored_values() -> None:
    pgm = read_bayer(REAL_RAW / "bayer_2592_304.pgm")
    assert pgm.shape == (304, 2592) and pgm.dtype == np.uint16 and (pgm.min(), pgm.max()) == (8, 959)
    png = read_bayer(REAL_RAW / "bayer_small.png")
    assert png.shape == (344, 256) and png.dtype == np.uint16 and png.max() == 1053


def test_pgm_values_are_not_rescaled(tmp_path: Path) -> None:
    """Pillow maps a maxval-1023 PGM onto 0..65535; the sensor values must come back as stored."""
    mosaic = _mosaic(5)
    _write_pgm16(tmp_path / "m.pgm", mosaic, maxval=1023)
    np.testing.assert_array_equal(read_bayer(tmp_path / "m.pgm"), mosaic)


# --------------------------------------------------------------------------- errors


def test_missing_root_and_split_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        load_zurich(tmp_path / "nowhere", "train")
    _zurich(tmp_path, "train")
    with pytest.raises(DataError, match=r"test.*does not exist.*has: train"):
        load_zurich(tmp_path, "test")
    with pytest.raises(DataError, match="mediatek_raw"):
        load_mai21(tmp_path, "train")


def test_empty_folder_says_so(tmp_path: Path) -> None:
    (tmp_path / "train" / "huawei_raw").mkdir(parents=True)
    (tmp_path / "train" / "canon").mkdir(parents=True)
    with pytest.raises(DataError, match=r"huawei_raw is empty"):
        load_zurich(tmp_path, "train")


def test_count_mismatch_lists_unmatched_files(tmp_path: Path) -> None:
    _zurich(tmp_path, "train", stems=("0", "1", "2"))
    _write_png16(tmp_path / "train" / "huawei_raw" / "7.png", _mosaic(7))
    (tmp_path / "train" / "canon" / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"4 RAW files.*2 RGB files.*RAW without RGB: 1\.png, 7\.png"):
        load_zurich(tmp_path, "train")


def test_corrupt_images_are_named(tmp_path: Path) -> None:
    _mai21(tmp_path, "train")
    (tmp_path / "train" / "mediatek_raw" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"1\.png: cannot read RAW"):
        load_mai21(tmp_path, "train")
    lazy = load_mai21(tmp_path, "train", lazy=True)  # listing succeeds; reading names the file
    with pytest.raises(DataError, match=r"1\.png"):
        lazy[1]

    _zurich(tmp_path / "z", "train", stems=("0",))
    jpg = tmp_path / "z" / "train" / "canon" / "0.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    with pytest.raises(DataError, match=r"0\.jpg: cannot read RGB"):
        load_zurich(tmp_path / "z", "train")


def test_eight_bit_or_colour_raw_is_rejected(tmp_path: Path) -> None:
    _mai21(tmp_path, "train")
    raw_dir = tmp_path / "train" / "mediatek_raw"
    Image.fromarray((_mosaic(0) // 4).astype(np.uint8)).save(raw_dir / "0.png")
    with pytest.raises(DataError, match=r"0\.png: RAW must be a 16-bit image; got mode L"):
        load_mai21(tmp_path, "train")
    Image.fromarray(_target(0)).save(raw_dir / "0.png")
    with pytest.raises(DataError, match=r"0\.png: RAW must be a 2-D Bayer mosaic; got shape \(32, 32, 3\)"):
        load_mai21(tmp_path, "train")
    _write_pgm16(raw_dir.parent.parent / "p" / "raw" / "x.pgm", _mosaic(0), maxval=255)
    _write_rgb(raw_dir.parent.parent / "p" / "rgb" / "x.png", _target(0))
    with pytest.raises(DataError, match=r"x\.pgm: RAW must be 16-bit"):
        load_paired(tmp_path / "p")


def test_size_mismatch_names_files_and_shapes(tmp_path: Path) -> None:
    _write_png16(tmp_path / "raw" / "s.png", _mosaic(0, (32, 32)))
    _write_rgb(tmp_path / "rgb" / "s.png", _target(0, (64, 64)))
    with pytest.raises(DataError, match=r"s\.png.*RAW mosaic 32x32 \(packed 16x16\).*RGB target 64x64"):
        load_paired(tmp_path)


def test_bad_kind_option_or_pattern(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset kind 'sid'"):
        load_dataset("sid", tmp_path, "train")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="does not take option.*white_level"):
        load_dataset("zurich", tmp_path, "train", white_level=1023)
    _zurich(tmp_path)
    with pytest.raises(DataError, match="Bayer pattern"):
        load_zurich(tmp_path, "train", pattern="RGBX")

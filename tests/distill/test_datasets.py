"""Training crops are reproducible from (seed, epoch, index) and RAW/RGB crops cover the same area."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from distill.data.datasets import FullImageDataset, PairedPatchDataset
from distill.data.embedded import RawRgbPair
from distill.data.errors import DataError
from distill.data.loaders import load_paired


def _coordinate_pair(h: int, w: int, name: str = "grid") -> RawRgbPair:
    """Every RAW pixel stores its own (row, col); each RGB pixel stores the RAW pixel it lies over."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    raw = np.stack([y, x, y + 0.5, x + 0.5])
    rgb = np.stack([np.repeat(np.repeat(c, 2, axis=0), 2, axis=1) for c in (y, x, y * 0 + 7)])
    return RawRgbPair(raw=raw, rgb=rgb, name=name)


def test_crops_are_aligned_and_in_bounds() -> None:
    ds = PairedPatchDataset([_coordinate_pair(40, 56)], patch_size=8, patches_per_image=50, seed=1)
    corners = set()
    for i in range(len(ds)):
        raw, rgb = ds[i]
        assert raw.shape == (4, 8, 8) and rgb.shape == (3, 16, 16)
        assert raw.dtype == rgb.dtype == torch.float32
        y0, x0 = int(raw[0, 0, 0]), int(raw[1, 0, 0])
        assert (y0, x0) == ds.offset(i, 40, 56)
        assert 0 <= y0 <= 32 and 0 <= x0 <= 48
        # The RGB crop starts at 2 * the RAW offset: its pixels name the RAW pixels of the RAW crop.
        assert torch.equal(rgb[0, ::2, ::2], raw[0])
        assert torch.equal(rgb[1, 1::2, 1::2], raw[1])
        corners.add((y0, x0))
    assert len(corners) > 40  # crops actually move around


def test_crops_depend_only_on_seed_epoch_and_index() -> None:
    pairs = [_coordinate_pair(64, 64, "a"), _coordinate_pair(48, 80, "b")]
    first = PairedPatchDataset(pairs, patch_size=16, patches_per_image=4, seed=5)
    again = PairedPatchDataset(pairs, patch_size=16, patches_per_image=4, seed=5)
    other_seed = PairedPatchDataset(pairs, patch_size=16, patches_per_image=4, seed=6)
    assert len(first) == 8

    def corners(ds: PairedPatchDataset) -> list[tuple[int, int]]:
        return [(int(ds[i][0][0, 0, 0]), int(ds[i][0][1, 0, 0])) for i in range(len(ds))]

    epoch0 = corners(first)
    assert corners(again) == epoch0
    assert corners(other_seed) != epoch0
    first.set_epoch(1)
    assert corners(first) != epoch0
    first.set_epoch(0)
    assert corners(first) == epoch0
    # Items 4-7 come from image "b" (48 high, 80 wide): their corners respect b's bounds.
    assert all(y <= 32 and x <= 64 for y, x in epoch0[4:] + corners(other_seed)[4:])


def test_dataloader_batches_and_worker_independence() -> None:
    ds = PairedPatchDataset([_coordinate_pair(32, 32)], patch_size=8, patches_per_image=6, seed=0)
    batches = list(DataLoader(ds, batch_size=4, shuffle=False))
    assert [b[0].shape for b in batches] == [(4, 4, 8, 8), (2, 4, 8, 8)]
    assert [b[1].shape[1:] for b in batches] == [(3, 16, 16)] * 2
    direct = torch.stack([ds[i][0] for i in range(6)])
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), direct)


def test_image_smaller_than_patch_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image tiny is 6x10 packed RAW pixels, smaller than the 8x8"):
        PairedPatchDataset([_coordinate_pair(16, 16), _coordinate_pair(6, 10, "tiny")], patch_size=8)
    # Lazily read pairs are checked when read.
    Image.fromarray(np.zeros((12, 12), np.uint16)).save(_mkdir(tmp_path / "raw") / "small.png")
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(_mkdir(tmp_path / "rgb") / "small.png")
    ds = PairedPatchDataset(load_paired(tmp_path, lazy=True), patch_size=8)
    with pytest.raises(DataError, match=r"image paired/small is 6x6"):
        ds[0]


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="no images"):
        PairedPatchDataset([], patch_size=8)
    with pytest.raises(DataError, match="patch_size"):
        PairedPatchDataset([_coordinate_pair(8, 8)], patch_size=0)
    ds = PairedPatchDataset([_coordinate_pair(8, 8)], patch_size=8, patches_per_image=2)
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(DataError, match="epoch"):
        ds.set_epoch(-1)


def test_full_image_dataset_returns_whole_pairs() -> None:
    pairs = [_coordinate_pair(8, 12, "a"), _coordinate_pair(16, 16, "b")]
    ds = FullImageDataset(pairs)
    assert len(ds) == 2 and ds.names == ["a", "b"]
    raw, rgb = ds[0]
    assert raw.shape == (4, 8, 12) and rgb.shape == (3, 16, 24)
    np.testing.assert_array_equal(raw.numpy(), pairs[0].raw)
    raw[0, 0, 0] = -1  # a copy: evaluation code cannot damage the stored pair
    assert pairs[0].raw[0, 0, 0] == 0


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

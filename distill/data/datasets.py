"""PyTorch datasets over ``RawRgbPair`` lists: aligned random training crops and whole eval images.

Crops are a pure function of (seed, epoch, item index), not of a global RNG or the worker that reads
them, so a run is reproducible with any ``num_workers`` and a resumed run can replay an epoch.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.embedded import RawRgbPair
from distill.data.errors import DataError
from distill.data.loaders import LazyPairs


def _check_fits(pair: RawRgbPair, patch_size: int) -> None:
    _, h, w = pair.raw.shape
    if h < patch_size or w < patch_size:
        raise DataError(
            f"image {pair.name} is {h}x{w} packed RAW pixels, smaller than the {patch_size}x{patch_size} "
            f"training patch; use a smaller patch_size or larger images"
        )


class PairedPatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``patches_per_image`` random aligned crops per image per epoch: packed RAW ``(4, p, p)`` and the
    sRGB target ``(3, 2p, 2p)`` covering the same scene area (``p = patch_size`` packed pixels).

    Call ``set_epoch(e)`` before each epoch to draw new crops.  With a DataLoader, ``set_epoch`` must
    run before the loader's workers start (no ``persistent_workers``), since each worker holds a copy.
    """

    def __init__(self, pairs: Sequence[RawRgbPair], patch_size: int, patches_per_image: int = 1, seed: int = 0,
                 crop_sets: int | None = None):
        if patch_size < 1:
            raise DataError(f"patch_size must be at least 1; got {patch_size}")
        if patches_per_image < 1:
            raise DataError(f"patches_per_image must be at least 1; got {patches_per_image}")
        if seed < 0:
            raise DataError(f"seed must be non-negative; got {seed}")
        if crop_sets is not None and crop_sets < 1:
            raise DataError(f"crop_sets must be at least 1; got {crop_sets}")
        if len(pairs) == 0:
            raise DataError("no images to cut training patches from")
        if not isinstance(pairs, LazyPairs):  # in memory: fail now rather than mid-epoch
            for pair in pairs:
                _check_fits(pair, patch_size)
        self.pairs = pairs
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.seed = seed
        self.crop_sets = crop_sets
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the crop set of ``epoch``: a new one every epoch, or one of ``crop_sets`` fixed sets in
        turn (a fixed dataset, whose teacher outputs a ``TeacherCache`` can reuse)."""
        if epoch < 0:
            raise DataError(f"epoch must be non-negative; got {epoch}")
        self.epoch = epoch % self.crop_sets if self.crop_sets else epoch

    def __len__(self) -> int:
        return len(self.pairs) * self.patches_per_image

    def offset(self, index: int, height: int, width: int) -> tuple[int, int]:
        """Top-left corner (packed pixels) of item ``index``'s crop in a ``height x width`` packed image."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        p = self.patch_size
        return int(rng.integers(0, height - p + 1)), int(rng.integers(0, width - p + 1))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"patch index {index} out of range for {len(self)} patches")
        pair = self.pairs[index // self.patches_per_image]
        _check_fits(pair, self.patch_size)
        _, h, w = pair.raw.shape
        y, x = self.offset(index, h, w)
        p = self.patch_size
        raw = np.ascontiguousarray(pair.raw[:, y : y + p, x : x + p], dtype=np.float32)
        rgb = np.ascontiguousarray(pair.rgb[:, 2 * y : 2 * (y + p), 2 * x : 2 * (x + p)], dtype=np.float32)
        return torch.from_numpy(raw), torch.from_numpy(rgb)


class FullImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Whole images for evaluation, ``(4, h, w)`` and ``(3, 2h, 2w)``; sizes differ, so batch size 1."""

    def __init__(self, pairs: Sequence[RawRgbPair]):
        if len(pairs) == 0:
            raise DataError("no images to evaluate on")
        self.pairs = pairs

    @property
    def names(self) -> list[str]:
        return self.pairs.names if isinstance(self.pairs, LazyPairs) else [p.name for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        pair = self.pairs[index]
        return torch.tensor(pair.raw, dtype=torch.float32), torch.tensor(pair.rgb, dtype=torch.float32)

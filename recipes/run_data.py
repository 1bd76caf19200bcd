"""The recipe's data, loaded once per run: training pairs and patches, held-out pairs, and the crops
every stage scores on (so ``psnr`` means the same thing at every stage)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import RawRgbPair
from distill.data.loaders import load_dataset
from distill.metrics import centre_crop_pair, centre_crop_to_multiple
from recipes.schema import Recipe

FULL_IMAGE_MULTIPLE = 32
"""Held-out images are cut to a multiple of 32 packed pixels (PyNET's five poolings, MobileNetV2's
stride 32): a size every model in the zoo accepts."""


class HeldOutTooSmall(ValueError):
    """A held-out image smaller than the export input size: the export stage cannot score it."""


@dataclass
class RunData:
    train_pairs: Sequence[RawRgbPair]
    eval_pairs: Sequence[RawRgbPair]
    train_set: PairedPatchDataset

    def eval_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.from_numpy(p.raw), torch.from_numpy(p.rgb)) for p in self.eval_pairs]

    def full_images(self, multiple: int = FULL_IMAGE_MULTIPLE) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Held-out (raw, rgb) centre-cropped to a multiple of ``multiple`` packed pixels."""
        return [centre_crop_to_multiple(raw, rgb, multiple) for raw, rgb in self.eval_tensors()]

    def eval_crops(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Centre crops of every held-out image at ``size`` packed pixels: (raw NCHW, rgb NCHW)."""
        h, w = size
        raws, rgbs = [], []
        for pair in self.eval_pairs:
            _, ph, pw = pair.raw.shape
            if ph < h or pw < w:
                raise HeldOutTooSmall(f"held-out image {pair.name} ({ph}x{pw} packed) is smaller than the "
                                      f"export input size {h}x{w}")
            raw, rgb = centre_crop_pair(pair.raw, pair.rgb, (h, w))
            raws.append(raw)
            rgbs.append(rgb)
        return np.stack(raws).astype(np.float32), np.stack(rgbs).astype(np.float32)


def load_run_data(recipe: Recipe) -> RunData:
    spec = recipe.data
    train_split, eval_split = spec.splits()
    options: dict[str, Any] = {"pattern": spec.pattern}
    if spec.kind == "embedded":
        options.update(seed=recipe.seed, max_side=spec.max_side)
    if spec.kind == "paired":
        options.update(raw_dir=spec.raw_dir, rgb_dir=spec.rgb_dir, black_level=spec.black_level,
                       white_level=spec.white_level)
    train_pairs = load_dataset(spec.kind, spec.root, train_split, **options)
    eval_pairs = load_dataset(spec.kind, spec.root, eval_split, **options)
    if spec.max_eval_images:
        eval_pairs = eval_pairs[: spec.max_eval_images]
    train_set = PairedPatchDataset(train_pairs, patch_size=spec.patch_size,
                                   patches_per_image=spec.patches_per_image, seed=recipe.seed,
                                   crop_sets=spec.crop_sets)
    return RunData(train_pairs=train_pairs, eval_pairs=eval_pairs, train_set=train_set)

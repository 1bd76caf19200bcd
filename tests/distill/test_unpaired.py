"""Unpaired-RAW distillation: RAW re-rendered from training photos, labelled by the teacher."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distill.data.embedded import load_embedded
from distill.data.errors import DataError
from distill.data.scenes import load_held_out_scenes
from distill.data.unpaired import UnpairedRaw
from distill.distiller import Distiller
from distill.trainer import TrainSpec, train


@pytest.fixture(scope="module")
def source() -> UnpairedRaw:
    return UnpairedRaw(load_embedded("train", seed=0, max_side=64), patch_size=8, seed=3)


def test_patches_are_packed_raw_in_range_and_a_pure_function_of_the_batch_index(source: UnpairedRaw) -> None:
    a = source.batch(5, 4)
    assert a.shape == (4, 4, 8, 8) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, source.batch(5, 4))
    assert not np.allclose(a, source.batch(6, 4)) and not np.allclose(a, source.batch(5, 4, rank=1))
    other = UnpairedRaw(load_embedded("train", seed=0, max_side=64), patch_size=8, seed=4)
    assert not np.allclose(a, other.batch(5, 4))


def test_the_raw_is_new_not_the_paired_training_raw() -> None:
    pairs = load_embedded("train", seed=0, max_side=64)
    patch = UnpairedRaw(pairs[:1], patch_size=pairs[0].raw.shape[1], seed=0).batch(0, 1)[0]
    paired = pairs[0].raw[:, : patch.shape[1], : patch.shape[2]]
    assert patch.shape == paired.shape and not np.allclose(patch, paired, atol=0.02)


def test_held_out_photos_and_too_small_images_are_refused() -> None:
    with pytest.raises(DataError, match="training photos only.*'chelsea'"):
        UnpairedRaw(load_embedded("eval", seed=0, max_side=64), patch_size=8)
    with pytest.raises(DataError, match="held out"):
        UnpairedRaw(load_held_out_scenes(max_side=64, variants=1)[2:3], patch_size=8)
    with pytest.raises(DataError, match="no training image is at least 256x256"):
        UnpairedRaw(load_embedded("train", seed=0, max_side=64), patch_size=128)
    assert len(UnpairedRaw([np.zeros((40, 40, 3)), np.zeros((8, 8, 3))], patch_size=10).images) == 1


class Pairs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.raw = torch.rand(8, 4, 8, 8, generator=g)
        self.rgb = nn.functional.pixel_shuffle(self.raw[:, [0, 1, 2, 3] * 3] * 0.5, 2)[:, :3]

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return self.raw[i], self.rgb[i]


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(4, 12, 3, padding=1), nn.PixelShuffle(2))


def _train(source: UnpairedRaw | None, weight: float, **kw) -> tuple[nn.Module, list]:  # noqa: ANN003
    student = _net(1)
    kd = Distiller(_net(2), output_weight=0.5, unpaired=source, unpaired_weight=weight, unpaired_batch=2, **kw)
    result = train(student, Pairs(), TrainSpec(steps=3, batch_size=4, log_every=1, device="cpu"), seed=0, kd=kd)
    return student, result.history


def test_off_is_bit_identical_and_on_logs_kd_unpaired(source: UnpairedRaw) -> None:
    plain, plain_history = _train(None, 0.0)
    zero, zero_history = _train(source, 0.0)
    for a, b in zip(plain.state_dict().values(), zero.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert plain_history == zero_history and all("kd_unpaired" not in h for h in zero_history)
    on, history = _train(source, 1.0)
    assert all(h["kd_unpaired"] > 0 for h in history)
    assert not torch.equal(on[0].weight, plain[0].weight)
    again, history_again = _train(source, 1.0)
    assert history == history_again and torch.equal(on[0].weight, again[0].weight)


def test_a_clean_image_teacher_cannot_label_unpaired_raw(source: UnpairedRaw) -> None:
    with pytest.raises(ValueError, match="needs a RAW teacher"):
        Distiller(_net(2), unpaired=source, unpaired_weight=1.0, teacher_input="target")


def test_embedded_sensor_is_the_one_load_embedded_renders_with() -> None:
    from distill.data.embedded import _photo, make_pair
    from distill.data.unpaired import embedded_sensor

    pair = load_embedded("train", seed=2, max_side=64)[0]
    srgb = _photo(pair.name, 64, 2).astype(np.float32) / 255.0
    again = make_pair(srgb, pair.name, np.random.default_rng([2, 0]), sensor=embedded_sensor(2))
    assert np.array_equal(pair.raw, again.raw)

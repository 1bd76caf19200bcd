"""Tiled full-resolution inference: the measured receptive field, exactness against untiled PyTorch in
the interior, any (odd, tiny) image size, and the TFLite path at the model's fixed input and batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.runtime.parity import run_tflite
from compress.runtime.tiling import (
    UnboundedReceptiveFieldError,
    measure_receptive_field,
    plan_tiles,
    tflite_runner,
    tiled_inference,
    tiled_tflite,
)
from compress.runtime.tiling_torch import receptive_field_margin, tiled_torch, torch_runner
from students import create_student


@pytest.fixture(scope="module")
def smallnet() -> nn.Module:
    torch.manual_seed(0)
    return create_student("smallnet", width=8).eval()


class KnownField(nn.Module):
    """5x5 conv then a 3x3 conv with dilation 2: each output reaches 2 + 2 = 4 packed pixels."""

    def __init__(self, global_term: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 5, padding=2)
        self.b = nn.Conv2d(8, 12, 3, padding=2, dilation=2)
        self.shuffle = nn.PixelShuffle(2)
        self.global_term = global_term

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(torch.relu(self.a(x)))
        if self.global_term:  # global average pooling: every output depends on every input
            y = y + y.mean(dim=(2, 3), keepdim=True)
        return self.shuffle(y)


def nearest_x2(x: np.ndarray) -> np.ndarray:
    """A pointwise 'model' (receptive field 0): the first 3 channels, upsampled x2."""
    return np.repeat(np.repeat(x[:, :3], 2, axis=2), 2, axis=3)


def packed(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((4, h, w)).astype(np.float32)


# --- receptive field ------------------------------------------------------------------------------


def test_receptive_field_is_measured(smallnet: nn.Module) -> None:
    torch.manual_seed(0)
    assert receptive_field_margin(smallnet, size=32) == 3  # three 3x3 convs
    assert receptive_field_margin(KnownField().eval(), size=32) == 4
    field = measure_receptive_field(nearest_x2, 16)
    assert (field.margin, field.bounded) == (0, True)


def test_global_pooling_has_no_exact_overlap() -> None:
    torch.manual_seed(0)
    with pytest.raises(UnboundedReceptiveFieldError, match="global pooling"):
        receptive_field_margin(KnownField(global_term=True).eval(), size=32)
    torch.manual_seed(0)
    lwisp = create_student("lwisp", width=0.25).eval()
    # LW-ISP's global feature vector is relu(fc(GAP(bottleneck))); at a random init the ReLU may be off
    # everywhere (then the net is local); a positive bias keeps it on, as training typically does
    nn.init.constant_(lwisp.global_fc.bias, 1.0)
    field = measure_receptive_field(torch_runner(lwisp), 32, seeds=(0,))
    assert not field.bounded and field.margin > 32 // 4


# --- exactness and sizes --------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "tile", "blend"), [(45, 71, 16, 4), (45, 71, 20, 0), (33, 17, (16, 24), 6),
                                                       (10, 9, 32, 8)])
def test_tiled_equals_untiled_in_the_interior(smallnet: nn.Module, h: int, w: int, tile: int | tuple[int, int],
                                              blend: int) -> None:
    margin = receptive_field_margin(smallnet, size=32)
    x = packed(h, w)
    full = torch_runner(smallnet)(x[None])[0]
    tiled = tiled_torch(x, smallnet, tile, overlap=margin, blend=blend, batch=3)
    assert tiled.shape == (3, 2 * h, 2 * w) == full.shape
    edge = 2 * margin  # within the margin of the image border the untiled run zero-pads, the tiled one reflects
    assert np.abs(tiled - full)[:, edge:-edge, edge:-edge].max() < 1e-5


def test_too_small_overlap_shows_seams(smallnet: nn.Module) -> None:
    """The exactness test above can fail: with less context than the field, tile edges leak in."""
    x = packed(45, 71)
    full = torch_runner(smallnet)(x[None])[0]
    tiled = tiled_torch(x, smallnet, 16, overlap=1, blend=0)
    assert np.abs(tiled - full)[:, 6:-6, 6:-6].max() > 1e-3


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 7), (3, 5), (29, 31), (64, 64), (65, 130)])
def test_any_size_and_weights_sum_to_one(h: int, w: int) -> None:
    """A pointwise model must come back exactly, borders included: the blend weights partition unity
    and reflect padding never shifts a pixel."""
    x = packed(h, w, seed=h * w)
    out = tiled_inference(x, nearest_x2, 16, overlap=2, blend=5, batch=2)
    assert out.shape == (3, 2 * h, 2 * w)
    np.testing.assert_allclose(out, nearest_x2(x[None])[0], atol=1e-6)


def test_plan_layout_and_alignment() -> None:
    plan = plan_tiles(100, 60, 32, overlap=3, blend=8)
    assert plan.pad_before == 3 and plan.starts_y[1] == 32 - 2 * 3 - 8
    assert plan.padded_size[0] >= 3 + 100 + 3 and plan.padded_size[1] >= 3 + 60 + 3
    aligned = plan_tiles(100, 60, 64, overlap=5, blend=8, align=16)
    assert aligned.pad_before % 16 == 0 and all(s % 16 == 0 for s in aligned.starts_y + aligned.starts_x)
    assert plan_tiles(10, 10, 32, overlap=3).count == 1
    with pytest.raises(ValueError, match="too small for overlap"):
        plan_tiles(100, 100, 16, overlap=6, blend=8)
    with pytest.raises(ValueError, match="multiple of align"):
        plan_tiles(100, 100, 20, overlap=2, align=16)


def test_bad_run_batch_output_is_named() -> None:
    with pytest.raises(ValueError, match="run_batch returned shape"):
        tiled_inference(packed(20, 20), lambda t: t, 8, overlap=1, blend=2)


# --- TFLite (fixed input size and batch) ------------------------------------------------------------


@pytest.mark.slow
def test_tflite_tiles_match_whole_model_runs(tiny_smallnet_tflite) -> None:  # noqa: ANN001
    """Where an image region fits the model's input, the tiled result equals one direct run on that
    region (beyond the margin), for fp32 and INT8; fp32 also matches untiled PyTorch."""
    fixed = tflite_runner(tiny_smallnet_tflite.int8)
    assert (fixed.batch, fixed.tile) == (2, (32, 32))
    field = measure_receptive_field(fixed, fixed.tile, batch=fixed.batch)
    assert (field.margin, field.bounded) == (3, True)
    x = packed(57, 83, seed=3)  # odd sizes; 15 tiles: the last batch is filled up to the model's batch of 2
    y0, x0, m = 10, 20, 3
    region = np.repeat(x[None, :, y0 : y0 + 32, x0 : x0 + 32], 2, axis=0)
    for path in (tiny_smallnet_tflite.fp32, tiny_smallnet_tflite.int8):
        tiled = tiled_tflite(x, path, overlap=m, blend=6)
        assert tiled.shape == (3, 114, 166)
        direct = run_tflite(path, region)[0]
        inner = tiled[:, 2 * (y0 + m) : 2 * (y0 + 32 - m), 2 * (x0 + m) : 2 * (x0 + 32 - m)]
        assert np.abs(inner - direct[:, 2 * m : -2 * m, 2 * m : -2 * m]).max() < 1e-5, path.name
    full = torch_runner(tiny_smallnet_tflite.model)(x[None])[0]
    fp32 = tiled_tflite(x, tiny_smallnet_tflite.fp32, overlap=m)
    assert np.abs(fp32 - full)[:, 2 * m : -2 * m, 2 * m : -2 * m].max() < 1e-4

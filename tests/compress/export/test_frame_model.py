"""The tile model rewritten to a frame size: same arithmetic as the resized interpreter, quantization kept."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compress.export.frame_model import FrameResizeError, matches_resized, reflect_into_frame, resize_tflite
from compress.runtime.parity import run_tflite
from distill.metrics import psnr_db


def _io(path: Path) -> tuple[list, list]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return interpreter.get_input_details(), interpreter.get_output_details()


@pytest.mark.slow
def test_frame_model_equals_the_resized_tile_and_keeps_quantization(tiny_smallnet_tflite, tmp_path: Path) -> None:
    tile = tiny_smallnet_tflite.int8
    frame = resize_tflite(tile, tmp_path / "frame.tflite", (48, 80))
    (tin,), (tout,) = _io(tile)
    (fin,), (fout,) = _io(frame)
    assert list(fin["shape"]) == [2, 48, 80, 4] and list(fout["shape"]) == [2, 96, 160, 3]  # fixture batch is 2
    assert fin["quantization"] == tin["quantization"] and fout["quantization"] == tout["quantization"]
    assert matches_resized(tile, frame)
    x = np.random.default_rng(0).random((2, 4, 48, 80)).astype(np.float32)
    with torch.no_grad():
        reference = tiny_smallnet_tflite.model(torch.from_numpy(x)).numpy()
    assert psnr_db(run_tflite(resize_tflite(tiny_smallnet_tflite.fp32, tmp_path / "f32.tflite", (48, 80)), x),
                   reference) > 60


@pytest.mark.slow
def test_a_graph_whose_output_does_not_follow_the_input_is_refused(tiny_smallnet_tflite, tmp_path: Path) -> None:
    with pytest.raises(FrameResizeError, match="baked shapes"):
        resize_tflite(tiny_smallnet_tflite.fp32, tmp_path / "x.tflite", (48, 80), upscale=3)
    assert not (tmp_path / "x.tflite").exists()


def test_reflect_into_frame_pads_small_images_and_crops_large_ones() -> None:
    raw = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    frame, box = reflect_into_frame(raw, (16, 20))  # more than twice the image: reflected repeatedly
    assert frame.shape == (4, 16, 20) and box == (0, 0, 5, 6)
    np.testing.assert_array_equal(frame[:, :5, :6], raw)
    np.testing.assert_array_equal(frame[:, 5, :6], raw[:, 3])  # reflection, edge not repeated
    frame, box = reflect_into_frame(raw, (2, 4))
    assert box == (1, 1, 2, 4)
    np.testing.assert_array_equal(frame, raw[:, 1:3, 1:5])

"""AI Edge Quantizer on an fp32 .tflite: a static INT8 model close to the fp32 one, with the ops AEQ leaves
in float counted (the shared tiny Smallnet: its DEPTH_TO_SPACE is one of them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress.quantization.aeq import aeq_int8, float_ops
from compress.runtime.parity import run_tflite
from distill.metrics import psnr_db


@pytest.mark.slow
def test_aeq_int8_is_close_to_fp32_and_reports_its_float_ops(tiny_smallnet_tflite, tmp_path: Path) -> None:
    frames = np.random.default_rng(1).random((8, 4, 32, 32)).astype(np.float32)
    path = aeq_int8(tiny_smallnet_tflite.fp32, frames.transpose(0, 2, 3, 1), tmp_path / "aeq.tflite")
    ref = run_tflite(tiny_smallnet_tflite.fp32, frames[:2])
    assert 25.0 < psnr_db(run_tflite(path, frames[:2]), ref) < 80.0  # quantized, and not broken
    floats = float_ops(path)
    assert floats.get("DEPTH_TO_SPACE") == 1  # AEQ 0.10 cannot quantize it: a float island
    assert "CONV_2D" not in floats and float_ops(tiny_smallnet_tflite.int8) == {}  # TF's quantizer: all int8


def test_ops_without_16_bit_activations_are_refused_before_quantizing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no 16-bit activations for SQUARED_DIFFERENCE"):
        aeq_int8(tmp_path / "never_read.tflite", np.zeros((1, 8, 8, 4), np.float32), tmp_path / "out.tflite",
                 int16_ops=("MEAN", "SQUARED_DIFFERENCE"))
    assert not (tmp_path / "out.tflite").exists()

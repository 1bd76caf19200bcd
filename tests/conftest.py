"""Session fixtures shared across test folders: one tiny TFLite conversion for tiling, process and verify.

onnx2tf conversions take 15-50 s each, so the tiling, ``ispdc process`` and ``ispdc verify`` tests
share one: Smallnet at width 8, exported for a fixed batch of 2 (so batching to a model's fixed
batch is exercised) at 32 x 32 packed pixels, as fp32 and INT8 (int8 I/O, calibrated on RAW-like
frames in [0, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

TINY_TFLITE_SHAPE = (2, 4, 32, 32)  # NCHW packed RAW: batch 2, 64 x 64 sRGB out


@dataclass(frozen=True)
class TinyTFLite:
    model: torch.nn.Module  # the PyTorch Smallnet the files were converted from (eval mode)
    onnx: Path
    fp32: Path
    int8: Path


@pytest.fixture(scope="session")
def tiny_smallnet_tflite(tmp_path_factory: pytest.TempPathFactory) -> TinyTFLite:
    from compress.export.onnx_export import export_onnx
    from compress.export.tflite import convert_onnx_to_tflite
    from students import create_student

    torch.manual_seed(0)
    model = create_student("smallnet", width=8).eval()
    folder = tmp_path_factory.mktemp("tiny_smallnet_tflite")
    onnx_path = export_onnx(model, folder / "smallnet.onnx", TINY_TFLITE_SHAPE)
    frames = np.random.default_rng(1).random((8, *TINY_TFLITE_SHAPE[1:])).astype(np.float32)
    files = convert_onnx_to_tflite(onnx_path, folder, frames, int8_io=True, modes=("int8",))
    return TinyTFLite(model=model, onnx=onnx_path, fp32=files["fp32"], int8=files["int8"])

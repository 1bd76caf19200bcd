"""A tiny real hand-off bundle (untrained Smallnet, fp32 TFLite, 16x16 packed input) for registry tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SIZE = 16


def build_tiny_bundle(folder: Path) -> Path:
    """ONNX -> onnx2tf -> TFLite -> ``write_bundle``: the same path the export and handoff stages take."""
    from compress.bundle.write import golden_tolerance, write_bundle
    from compress.export.onnx_export import export_onnx
    from compress.export.tflite import convert_onnx_to_tflite
    from compress.export.tflite_inspect import tflite_io_details
    from compress.runtime.parity import run_tflite
    from students import STUDENTS

    torch.manual_seed(0)
    model = STUDENTS.create("smallnet", width=4).eval()
    onnx_path = export_onnx(model, folder / "model.onnx", (1, 4, SIZE, SIZE))
    tflite = convert_onnx_to_tflite(onnx_path, folder / "tflite", None)["fp32"]
    io = tflite_io_details(tflite)
    inp, out = io["inputs"][0], io["outputs"][0]
    golden_in = np.random.default_rng(0).random((1, 4, SIZE, SIZE), dtype=np.float32)
    golden_out = np.transpose(run_tflite(tflite, golden_in), (0, 2, 3, 1))
    card = {
        "name": "tiny", "description": "untrained tiny Smallnet (test bundle)", "format": "tflite",
        "quantization": "none (fp32)",
        "input": {"name": inp["name"], "shape": inp["shape"], "dtype": inp["dtype"], "layout": "NHWC",
                  "scale": None, "zero_point": None, "channel_order": ["B", "Gb", "R", "Gr"],
                  "bayer_pattern": "RGGB", "packing": {"B": "1::2, 1::2"}, "normalisation": "raw / white",
                  "range": [0.0, 1.0]},
        "output": {"name": out["name"], "shape": out["shape"], "dtype": out["dtype"], "layout": "NHWC",
                   "scale": None, "zero_point": None, "colour": "sRGB", "range": [0.0, 1.0]},
        "quality": {"tflite_fp32": {"psnr": 10.0, "ssim": 0.1, "parity_psnr_db": 99.0}},
        "evaluation": "none (test bundle)",
        "cost": {"size_kb": tflite.stat().st_size / 1024, "params": 1, "macs": 1, "latency_ms": 1.0,
                 "latency_threads": 2},
        "golden": {"input": "golden_input.npy", "output": "golden_output.npy", "tolerance": golden_tolerance(out)},
        "provenance": {"recipe": "test", "git_sha": "unknown"},
    }
    return write_bundle(folder / "bundle", tflite, card, np.transpose(golden_in, (0, 2, 3, 1)), golden_out)

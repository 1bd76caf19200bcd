"""Tiny real hand-off bundles: an fp32 one built from scratch (registry tests) and an INT8 one around the
session's converted Smallnet (process / verify / run_model.py tests)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
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


def tiny_card(model_path: Path, pattern: str = "RGGB") -> dict:
    """The fields the handoff stage writes (values for an untrained test model)."""
    from compress.bundle.write import golden_tolerance
    from compress.export.tflite_inspect import tflite_io_details
    from distill.data.bayer import PACKED_ORDER, colour_offsets

    io = tflite_io_details(model_path)
    inp, out = io["inputs"][0], io["outputs"][0]
    return {
        "name": "tiny", "description": "untrained Smallnet for tests", "format": "tflite",
        "quantization": "int8: per-channel int8 weights, per-tensor int8 activations, int8 input/output",
        "model": {"family": "student", "name": "smallnet", "config": {"width": 8}, "widths": None, "folded": True},
        "input": {**inp, "layout": "NHWC", "channel_order": list(PACKED_ORDER), "bayer_pattern": pattern,
                  "packing": {c: f"{dy}::2, {dx}::2" for c, (dy, dx) in colour_offsets(pattern).items()},
                  "normalisation": "(raw - black) / (white - black), clipped to [0, 1]", "range": [0.0, 1.0]},
        "output": {**out, "layout": "NHWC", "colour": "sRGB", "range": [0.0, 1.0]},
        "quality": {"tflite_int8": {"psnr": 0.0, "ssim": 0.0, "parity_psnr_db": 0.0}},
        "evaluation": "nothing (untrained test model)",
        "cost": {"size_kb": model_path.stat().st_size / 1024, "params": 0, "macs": 0, "latency_ms": 0.0,
                 "latency_threads": 2},
        "golden": {"input": "golden_input.npy", "output": "golden_output.npy", "tolerance": golden_tolerance(out)},
        "provenance": {"recipe": "test"},
    }


def build_int8_bundle(model: Path, dest: Path, extra_models: dict[str, Path] | None = None,
                      card_extra: dict | None = None) -> Path:
    """``write_bundle`` around a converted INT8 model (random golden input, its own output as golden)."""
    from compress.bundle.write import write_bundle
    from compress.runtime.parity import run_tflite

    golden_in = np.random.default_rng(5).random((2, 4, 32, 32)).astype(np.float32)
    golden_out = run_tflite(model, golden_in)
    return write_bundle(dest, model, {**tiny_card(model), **(card_extra or {})}, golden_in.transpose(0, 2, 3, 1),
                        golden_out.transpose(0, 2, 3, 1), extra_models=extra_models)


@pytest.fixture(scope="module")
def bundle(tiny_smallnet_tflite, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """The INT8 bundle the process / verify / run_model.py tests share (import this fixture to use it)."""
    return build_int8_bundle(tiny_smallnet_tflite.int8, tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture
def bundle_copy(bundle: Path, tmp_path: Path) -> Path:
    """A copy a test may tamper with."""
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))

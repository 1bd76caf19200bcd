"""Selective precision: per-layer INT8 error from TFLite's debugger, every layer's measured drop when kept in
float, then a greedy search for float layers until a budget holds.

One onnx2tf conversion runs three searches inside the ``extra`` hook (same Keras graph, same
calibration): an unlimited budget (the all-INT8 drop), half that drop (needs float layers and must be
reached) and an impossible budget with one float layer allowed (must report not reached).

The "ground truth" is the float model's output plus Gaussian noise whose power equals the INT8
model's error power, so the all-INT8 model loses about 3 dB against the fp32 TFLite model, a drop
large enough to search on even for an untrained net.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.export.onnx_export import export_onnx
from compress.export.tflite import ConverterFactory, convert_onnx_to_tflite
from compress.export.tflite_inspect import assert_builtin_only, tflite_io_details
from compress.quantization.selective import SelectiveResult, search, selective_markdown
from compress.runtime.parity import run_tflite
from distill.metrics import psnr_db
from students import create_student

SHAPE = (1, 4, 32, 32)


def raw(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *SHAPE[1:]), dtype=np.float32)


@pytest.fixture(scope="session")
def searches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SelectiveResult | Path]:
    folder = tmp_path_factory.mktemp("selective")
    torch.manual_seed(0)
    model = create_student("smallnet", width=16).eval()
    # PyTorch's default bias init for conv3, not Smallnet's mid-grey start (OUTPUT_BIAS): with the latter
    # the untrained net's INT8 drop could not be halved by float layers (measured: budget not reached),
    # so the "needs float layers and must be reached" case would test nothing
    bound = 1 / math.sqrt(model.conv3.weight[0].numel())
    torch.nn.init.uniform_(model.conv3.bias, -bound, bound)
    onnx_path = export_onnx(model, folder / "net.onnx", SHAPE)
    held_out = raw(4, 2)
    results: dict[str, SelectiveResult | Path] = {}

    def hook(factory: ConverterFactory, built: dict[str, Path], work: Path) -> dict[str, Path]:
        fp32_out = run_tflite(built["fp32"], held_out)
        state: dict[str, np.ndarray] = {"truth": fp32_out}

        def drop(candidate: Path, fp32: Path) -> float:
            return psnr_db(run_tflite(fp32, held_out), state["truth"]) - psnr_db(run_tflite(candidate, held_out),
                                                                               state["truth"])

        plain = search(factory, built["fp32"], drop, work, math.inf, 8)
        assert plain.path is not None
        noise_power = np.mean((run_tflite(plain.path, held_out) - fp32_out) ** 2)
        rng = np.random.default_rng(0)
        state["truth"] = fp32_out + rng.normal(0.0, math.sqrt(noise_power), fp32_out.shape).astype(np.float32)
        results["plain"] = search(factory, built["fp32"], drop, work, math.inf, 8)
        budget = results["plain"].drop_db / 2  # type: ignore[union-attr]
        reached = search(factory, built["fp32"], drop, work, budget, 8, probe=3)
        assert reached.path is not None
        results["reached"] = reached
        kept = work / "reached.tflite"
        reached.path.replace(kept)
        results["impossible"] = search(factory, built["fp32"], drop, work, -100.0, 1)
        return {"selective": kept}

    built = convert_onnx_to_tflite(onnx_path, folder / "tflite", raw(8, 1), int8_io=True, modes=(), extra=hook)
    results["model"] = built["selective"]
    return results


@pytest.mark.slow
def test_layer_table_ranks_every_quantized_op(searches: dict) -> None:
    layers = searches["plain"].layers
    assert [layer.op for layer in layers[:2]] == ["CONV_2D", "TANH"]
    assert all(layer.scale > 0 and layer.rmse >= 0 for layer in layers)
    noisy = [layer for layer in layers if layer.op != "DEPTH_TO_SPACE"]
    assert all(layer.sqnr_db < 80 for layer in noisy)  # real quantization error, not an exact op
    assert searches["plain"].float_layers == [] and searches["plain"].reached


@pytest.mark.slow
def test_search_reaches_a_budget_that_needs_float_layers(searches: dict) -> None:
    plain, reached = searches["plain"], searches["reached"]
    assert plain.int8_drop_db > 1.0  # the noise makes quantization error visible (about 3 dB)
    assert reached.reached and reached.drop_db <= plain.int8_drop_db / 2
    assert 1 <= len(reached.float_layers) <= 8
    by_name = {layer.name: layer for layer in reached.layers}
    measured = [layer for layer in reached.layers if layer.float_drop_db is not None]
    assert len(measured) >= 2 and all(layer.sqnr_db < 80 for layer in measured)  # exact ops are never tried
    first = min(measured, key=lambda layer: layer.float_drop_db)
    assert reached.float_layers[0] == first.name  # the layer whose float copy helps most, as measured
    assert first.float_drop_db < plain.int8_drop_db
    assert all(by_name[name].op != "DEPTH_TO_SPACE" for name in reached.float_layers)
    assert [s["float_layers"] for s in reached.steps] == list(range(len(reached.float_layers) + 1))
    assert reached.steps[-1]["drop_db"] == reached.drop_db
    assert reached.steps[0]["tried"] == 1 + len(measured)  # all-int8, then every candidate alone
    assert all(step["tried"] <= 3 for step in reached.steps[2:])  # probe=3 models per later step


@pytest.mark.slow
def test_selected_model_is_builtin_mixed_precision_with_int8_io(searches: dict) -> None:
    model = searches["model"]
    assert_builtin_only(model)
    io = tflite_io_details(model)
    assert io["inputs"][0]["dtype"] == "int8" and io["outputs"][0]["dtype"] == "int8"
    from compress.export.tflite_inspect import tflite_ops

    assert "DEQUANTIZE" in tflite_ops(model)  # a float island inside the int8 graph


@pytest.mark.slow
def test_an_unreachable_budget_is_reported_with_the_layer_limit(searches: dict) -> None:
    result = searches["impossible"]
    assert not result.reached and len(result.float_layers) == 1 and result.drop_db > -100.0
    text = selective_markdown(result)
    assert "OVER budget" in text and "| float |" in text
    data = result.to_json()
    assert data["reached"] is False and len(data["layers"]) == len(result.layers)

"""Activation range setting: the searches on plain arrays, and ranges written into the calibrated model
reaching the shipped INT8 tensors through TFLite's own quantizer (one tiny onnx2tf conversion)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compress.export.onnx_export import export_onnx
from compress.export.tflite import ConverterFactory, convert_onnx_to_tflite
from compress.export.tflite_inspect import assert_builtin_only, tflite_io_details
from compress.quantization.ranges import (
    NORM_STATS_OPS,
    RangeSetting,
    calibrate,
    norm_stats_advice,
    quantization_mse,
    read_ranges,
    search_range,
    searchable_tensors,
    write_ranges,
)
from students import create_student

SHAPE = (1, 4, 32, 32)


def heavy_tailed(seed: int = 0) -> np.ndarray:
    """Mostly small values with a few large ones: the activation shape where min/max wastes the grid."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 0.1, 100_000).astype(np.float32)
    values[:20] = rng.uniform(5.0, 8.0, 20)
    return values


def test_minmax_is_the_observed_range_and_always_contains_zero() -> None:
    assert search_range(np.array([0.5, 2.0], np.float32), "minmax") == (0.0, 2.0)
    assert search_range(np.array([-3.0, -1.0], np.float32), "minmax") == (-3.0, 0.0)


def test_percentile_clips_outliers() -> None:
    values = heavy_tailed()
    lo, hi = search_range(values, "percentile", percentile=99.9)
    assert lo < 0 < hi < 1.0  # the 20 outliers (0.02 %) are clipped, the bulk kept
    assert hi == pytest.approx(np.percentile(values, 99.9))


def test_mse_range_lowers_the_quantization_error() -> None:
    values = heavy_tailed()
    full = search_range(values, "minmax")
    lo, hi = search_range(values, "mse")
    assert full[0] <= lo <= 0 <= hi < full[1]
    assert quantization_mse(values, lo, hi) < 0.95 * quantization_mse(values, *full)
    # squared error weighs clipped outliers heavily: MSE trims the range, percentile throws the tail away
    assert hi > search_range(values, "percentile", percentile=99.9)[1]


def test_mse_keeps_a_range_without_outliers() -> None:
    values = np.random.default_rng(1).uniform(0.0, 1.0, 50_000).astype(np.float32)
    lo, hi = search_range(values, "mse")
    assert lo == 0.0 and hi > 0.95  # a uniform tensor loses more by clipping than it gains in resolution


def test_values_on_the_grid_quantize_exactly() -> None:
    grid = (np.arange(-128, 128, dtype=np.float32) + 28) * (2.0 / 255)  # zero point -28, range [-200/255, 310/255]
    assert quantization_mse(grid, float(grid.min()), float(grid.max())) < 1e-12


def test_unknown_method_and_bad_percentile_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown range method 'kl'"):
        search_range(np.ones(3, np.float32), "kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percentile must be in"):
        RangeSetting("percentile", percentile=20.0)


def test_norm_stats_advice_names_the_keys_only_where_instance_norm_is_int8() -> None:
    pynet_ops = ["CONV_2D", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "MUL", "ADD", "PRELU"]
    advice = norm_stats_advice(pynet_ops, [], "minmax")
    assert advice is not None and "quantize.float_ops: [MEAN, SQUARED_DIFFERENCE, RSQRT]" in advice
    assert "quantize.ranges: mse" in advice and "pynetv2_mobile_nonorm" in advice
    assert "quantize.ranges" not in (norm_stats_advice(pynet_ops, [], "mse") or "")
    assert norm_stats_advice(pynet_ops, list(NORM_STATS_OPS), "mse") is None  # already float
    assert norm_stats_advice(["CONV_2D", "MEAN", "LEAKY_RELU"], [], "minmax") is None  # channel attention only


@pytest.fixture(scope="module")
def ranged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("ranges")
    torch.manual_seed(0)
    onnx_path = export_onnx(create_student("smallnet", width=8).eval(), folder / "net.onnx", SHAPE)
    frames = np.random.default_rng(1).random((8, *SHAPE[1:]), dtype=np.float32)
    state: dict[str, Any] = {}
    mse = RangeSetting("mse", key="int8_mse")

    def hook(factory: ConverterFactory, built: dict[str, Path], work: Path) -> dict[str, Path]:
        state["calibrated"] = calibrate(factory)
        state["searchable"] = searchable_tensors(state["calibrated"])
        return {**RangeSetting("minmax", key="int8_minmax")(factory, built, work), **mse(factory, built, work)}

    state["files"] = convert_onnx_to_tflite(onnx_path, folder / "tflite", frames, int8_io=True, modes=["int8"],
                                            extra=hook)
    state["mse"] = mse
    return state


def _scales(path: Path) -> dict[str, tuple[float, int]]:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    out = {}
    for tensor in model.subgraphs[0].tensors:
        q = tensor.quantization
        if q is not None and q.scale is not None and len(q.scale) == 1:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            out[name] = (float(q.scale[0]), int(q.zeroPoint[0]))
    return out


@pytest.mark.slow
def test_minmax_setting_rebuilds_the_converters_int8_model_where_the_calibrator_is_right(ranged) -> None:
    from compress.runtime.parity import run_tflite

    files = ranged["files"]  # Smallnet has no in-place chain: the calibrator's ranges are the values' own
    ours, theirs = _scales(files["int8_minmax"]), _scales(files["int8"])
    assert ours.keys() == theirs.keys()
    for name, (scale, zero) in ours.items():
        assert scale == pytest.approx(theirs[name][0], rel=1e-5) and abs(zero - theirs[name][1]) <= 1, name
    frames = np.random.default_rng(5).random((2, *SHAPE[1:]), dtype=np.float32)
    out, ref = run_tflite(files["int8_minmax"], frames), run_tflite(files["int8"], frames)
    step = max(s for s, _ in theirs.values())
    assert np.abs(out - ref).max() <= step + 1e-6 and np.mean(np.abs(out - ref) < 1e-5) > 0.99  # a rare 1-step flip


@pytest.fixture(scope="module")
def in_place_chain(tmp_path_factory: pytest.TempPathFactory, instance_norm_net) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("in_place")
    model = instance_norm_net
    onnx_path = export_onnx(model, folder / "norm.onnx", SHAPE)
    frames = np.random.default_rng(2).random((6, *SHAPE[1:]), dtype=np.float32)
    minmax = RangeSetting("minmax", key="int8_minmax")

    def hook(factory: ConverterFactory, built: dict[str, Path], work: Path) -> dict[str, Path]:
        return {**minmax(factory, built, work), **RangeSetting("calibrator", key="int8_stock")(factory, built, work)}

    files = convert_onnx_to_tflite(onnx_path, folder / "tflite", frames, modes=["int8"], extra=hook)
    return {"files": files, "minmax": minmax, "frames": frames}


@pytest.mark.slow
def test_calibrator_ranges_rebuild_the_stock_converters_model(in_place_chain) -> None:
    files = in_place_chain["files"]
    assert _scales(files["int8_stock"]) == _scales(files["int8"])


@pytest.mark.slow
def test_minmax_corrects_the_ranges_the_calibrator_logs_after_in_place_ops(in_place_chain) -> None:
    from compress.runtime.parity import run_tflite
    from distill.metrics import psnr_db

    files, minmax, frames = in_place_chain["files"], in_place_chain["minmax"], in_place_chain["frames"]
    overstated = minmax.calibrator_overstated
    assert any("Sub" in name for name in overstated) and any("Mul" in name for name in overstated)
    scales = _scales(files["int8"])
    # the converter's own int8 model quantizes the chain's tensors on the too-wide range
    chain = [n for n in overstated if ("Sub" in n or "Mul" in n) and n in scales]
    assert chain and all(scales[n][0] > 1.02 * (minmax.ranges[n][1] - minmax.ranges[n][0]) / 255 for n in chain)
    reference = run_tflite(files["fp32"], frames)
    calibrator, corrected = run_tflite(files["int8"], frames), run_tflite(files["int8_minmax"], frames)
    assert psnr_db(corrected, reference) > psnr_db(calibrator, reference) + 6.0


@pytest.mark.slow
def test_written_ranges_read_back_and_skip_fixed_range_ops(ranged: dict[str, Any]) -> None:
    calibrated, names = ranged["calibrated"], ranged["searchable"]
    assert names and all("Tanh" not in name for name in names)  # TANH's int8 output parameters are fixed
    target = names[0]
    lo, hi = read_ranges(calibrated)[target]
    changed = read_ranges(write_ranges(calibrated, {target: (lo / 2, hi / 2)}))
    assert changed[target] == pytest.approx((min(lo / 2, 0.0), max(hi / 2, 0.0)))
    with pytest.raises(KeyError, match="no calibrated tensor named"):
        write_ranges(calibrated, {"not/a/tensor": (0.0, 1.0)})


@pytest.mark.slow
def test_searched_ranges_are_what_the_int8_tensors_use(ranged: dict[str, Any]) -> None:
    mse, path = ranged["mse"], ranged["files"]["int8_mse"]
    assert_builtin_only(path)
    io = tflite_io_details(path)
    assert io["inputs"][0]["dtype"] == "int8" and io["outputs"][0]["dtype"] == "int8"
    assert mse.changed >= 1
    scales, checked = _scales(path), 0
    for name, (lo, hi) in mse.ranges.items():
        if name in scales:  # a tensor the quantizer kept under its own name
            assert scales[name][0] == pytest.approx((hi - lo) / 255, rel=0.02), name
            checked += 1
    assert checked >= 1

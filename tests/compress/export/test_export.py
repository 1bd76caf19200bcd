"""ONNX export, the CRD -> DCR pixel-shuffle rewrite, onnx2tf -> TFLite fp32/INT8, parity and latency.

Conversions are expensive, so the whole file converts twice: Smallnet to fp32 + INT8 and PUNET to
fp32, each once in a session fixture that the slow tests share.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compress.export.onnx_export import export_onnx, rewrite_depth_to_space_dcr
from compress.export.tflite import ConversionError, convert_onnx_to_tflite
from compress.export.tflite_inspect import NonBuiltinOpError, assert_builtin_only, tflite_io_details, tflite_ops
from compress.runtime.latency import onnx_latency_ms, tflite_latency_ms
from compress.runtime.parity import parity_psnr, run_onnx, run_tflite
from distill.metrics import PSNR_CAP_DB, psnr_db
from students import create_student
from teachers import create_teacher

REPO = Path(__file__).resolve().parents[3]
SHAPE = (1, 4, 32, 32)  # packed RAW; 64x64 sRGB out
RAW_MAX = 0.5  # calibration and test frames span [0, 0.5]: an INT8 input scale of 0.5/255 proves they were used


def raw_frames(count: int, seed: int) -> np.ndarray:
    return (RAW_MAX * np.random.default_rng(seed).random((count, *SHAPE[1:]))).astype(np.float32)


@pytest.fixture(scope="session")
def smallnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_student("smallnet", width=8).eval()


@pytest.fixture(scope="session")
def punet() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_teacher("punet", base_width=4).eval()


@pytest.fixture(scope="session")
def smallnet_onnx(smallnet: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(smallnet, tmp_path_factory.mktemp("smallnet") / "smallnet.onnx", SHAPE)


@pytest.fixture(scope="session")
def smallnet_tflite(smallnet_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return convert_onnx_to_tflite(smallnet_onnx, tmp_path_factory.mktemp("smallnet_tflite"), raw_frames(8, 1))


@pytest.fixture(scope="session")
def punet_tflite(punet: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("punet")
    onnx_path = export_onnx(punet, folder / "punet.onnx", SHAPE)
    return convert_onnx_to_tflite(onnx_path, folder / "tflite", None)


# --- ONNX -------------------------------------------------------------------------------------------

def test_export_names_shape_and_training_flag(tmp_path: Path) -> None:
    model = create_student("smallnet", width=8).train()
    path = export_onnx(model, tmp_path / "m.onnx", SHAPE)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["raw"] and [o.name for o in graph.output] == ["rgb"]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == list(SHAPE)
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert model.training


def test_dcr_rewrite_keeps_smallnet_output(smallnet: torch.nn.Module, smallnet_onnx: Path, tmp_path: Path) -> None:
    crd = export_onnx(smallnet, tmp_path / "crd.onnx", SHAPE, dcr_pixel_shuffle=False)
    modes = {p: [helper.get_attribute_value(a) for n in onnx.load(str(p)).graph.node if n.op_type == "DepthToSpace"
                 for a in n.attribute if a.name == "mode"] for p in (crd, smallnet_onnx)}
    assert modes == {crd: [b"CRD"], smallnet_onnx: [b"DCR"]}
    x = raw_frames(1, 2)
    before, after = run_onnx(crd, x), run_onnx(smallnet_onnx, x)
    assert np.abs(after - before).max() < 1e-5
    with torch.no_grad():
        assert np.abs(after - smallnet(torch.from_numpy(x)).numpy()).max() < 1e-5


def _conv_d2s_model(path: Path, also_output_activation: bool) -> np.ndarray:
    """Conv(4->12) -> Relu -> DepthToSpace CRD; optionally the Relu output is a graph output too."""
    rng = np.random.default_rng(3)
    weight, bias = rng.normal(size=(12, 4, 3, 3)).astype(np.float32), rng.normal(size=12).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("DepthToSpace", ["r"], ["y"], blocksize=2, mode="CRD")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])]
    if also_output_activation:
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 12, 8, 8]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              outputs, [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return weight


def test_dcr_rewrite_permutes_conv_channels_exactly(tmp_path: Path) -> None:
    path = tmp_path / "g.onnx"
    weight = _conv_d2s_model(path, also_output_activation=False)
    x = np.random.default_rng(4).normal(size=(1, 4, 8, 8)).astype(np.float32)
    before = run_onnx(path, x)
    assert rewrite_depth_to_space_dcr(path) == 1
    after_model = onnx.load(str(path))
    new_weight = numpy_helper.to_array(next(i for i in after_model.graph.initializer if i.name == "w"))
    assert not np.array_equal(new_weight, weight)
    assert np.array_equal(np.sort(new_weight, axis=0), np.sort(weight, axis=0))  # a permutation of channels
    assert np.abs(run_onnx(path, x) - before).max() < 1e-5


def test_dcr_rewrite_leaves_shared_activation_alone(tmp_path: Path) -> None:
    path = tmp_path / "shared.onnx"
    _conv_d2s_model(path, also_output_activation=True)
    original = path.read_bytes()
    assert rewrite_depth_to_space_dcr(path) == 0
    assert path.read_bytes() == original


def test_punet_onnx_matches_torch(punet: torch.nn.Module, tmp_path: Path) -> None:
    path = export_onnx(punet, tmp_path / "punet.onnx", SHAPE)
    assert parity_psnr(punet, path, raw_frames(2, 5)) >= 60


# --- conversion errors (no TensorFlow needed) -----------------------------------------------------

def test_corrupt_onnx_raises_conversion_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="corrupt.onnx"):
        convert_onnx_to_tflite(bad, out, raw_frames(2, 0))
    assert not out.exists() or not list(out.rglob("*.tflite"))


def test_failure_mid_conversion_leaves_no_tflite(smallnet_onnx: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import compress.export.tflite as tfl

    def half_written(onnx_path: Path, work: Path, *args: object) -> dict[str, Path]:
        (work / "fp32.tflite").write_bytes(b"TFL3 half")
        print("onnx2tf: something went wrong")
        sys.exit(1)  # how onnx2tf reports most errors

    monkeypatch.setattr(tfl, "_build_all", half_written)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="smallnet.onnx") as info:
        convert_onnx_to_tflite(smallnet_onnx, out, raw_frames(2, 0))
    assert "something went wrong" in str(info.value)
    assert list(out.rglob("*")) == []


def test_calibration_must_match_the_model_input(smallnet_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NCHW"):
        convert_onnx_to_tflite(smallnet_onnx, tmp_path, np.zeros((2, 32, 32, 4), np.float32))
    with pytest.raises(ValueError, match="calibration"):
        convert_onnx_to_tflite(smallnet_onnx, tmp_path, None, modes=("int8",))


def test_converter_modules_import_without_tensorflow() -> None:
    code = ("import sys, compress.export.tflite, compress.runtime.parity, compress.runtime.latency, "
            "compress.export.onnx_export; "
            "assert 'tensorflow' not in sys.modules and 'onnx2tf' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# --- metrics ----------------------------------------------------------------------------------------

def test_psnr_db_is_a_mean_of_per_image_psnr_with_a_finite_cap() -> None:
    a = np.zeros((2, 3, 4, 4), np.float32)
    b = a.copy()
    assert psnr_db(a, b) == PSNR_CAP_DB
    b[0] += 0.1  # 20 dB
    b[1] += 0.01  # 40 dB
    assert psnr_db(a, b) == pytest.approx(30.0, abs=1e-4)
    assert psnr_db(a[0], b[0]) == pytest.approx(20.0, abs=1e-4)
    with pytest.raises(ValueError):
        psnr_db(a, b[:1])


# --- TFLite (converted once per model) ------------------------------------------------------------

@pytest.mark.slow
def test_smallnet_fp32_tflite_matches_torch(smallnet: torch.nn.Module, smallnet_tflite: dict[str, Path]) -> None:
    assert sorted(smallnet_tflite) == ["fp32", "int8"]
    assert sorted(p.name for p in smallnet_tflite["fp32"].parent.iterdir()) == ["smallnet_fp32.tflite",
                                                                               "smallnet_int8.tflite"]
    assert parity_psnr(smallnet, smallnet_tflite["fp32"], raw_frames(3, 6)) >= 60  # batch 3 on a batch-1 model


@pytest.mark.slow
def test_smallnet_int8_tflite_is_close_to_torch(smallnet: torch.nn.Module, smallnet_tflite: dict[str, Path]) -> None:
    # Measured 60.7 dB for this random-weight net (its outputs span a small range); trained nets with
    # outputs over [0, 1] land lower, so the bound only guards against a broken quantization.
    assert parity_psnr(smallnet, smallnet_tflite["int8"], raw_frames(3, 6)) > 35


@pytest.mark.slow
def test_smallnet_tflite_uses_native_depth_to_space(smallnet_tflite: dict[str, Path]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    for path in smallnet_tflite.values():
        assert_builtin_only(path)
        ops = set(tflite_ops(path))
        assert "DEPTH_TO_SPACE" in ops and "CONV_2D" in ops
        assert not ops & {"RESHAPE", "TRANSPOSE"}, ops
        ranks = [len(t["shape"]) for t in Interpreter(model_path=str(path)).get_tensor_details()]
        assert max(ranks) <= 4


@pytest.mark.slow
def test_io_details_report_int8_scales(smallnet_tflite: dict[str, Path]) -> None:
    fp32, int8 = (tflite_io_details(smallnet_tflite[k]) for k in ("fp32", "int8"))
    json.dumps({"fp32": fp32, "int8": int8})
    for io in (fp32, int8):
        assert [(t["name"], t["shape"]) for t in io["inputs"]] == [("raw", [1, 32, 32, 4])]
        assert [(t["name"], t["shape"]) for t in io["outputs"]] == [("rgb", [1, 64, 64, 3])]
    assert fp32["inputs"][0]["dtype"] == "float32" and fp32["inputs"][0]["scale"] is None
    inp, out = int8["inputs"][0], int8["outputs"][0]
    assert inp["dtype"] == out["dtype"] == "int8"
    assert out["scale"] > 0 and isinstance(out["zero_point"], int)
    # calibrated on the RAW frames given ([0, 0.5]), not onnx2tf's ImageNet-normalised RGB set
    assert inp["scale"] == pytest.approx(RAW_MAX / 255, rel=0.05)


@pytest.mark.slow
def test_run_tflite_quantizes_int8_input_like_the_model(smallnet_tflite: dict[str, Path]) -> None:
    x = raw_frames(2, 7)
    fp32, int8 = run_tflite(smallnet_tflite["fp32"], x), run_tflite(smallnet_tflite["int8"], x)
    assert fp32.shape == int8.shape == (2, 3, 64, 64) and int8.dtype == np.float32
    assert psnr_db(int8, fp32) > 35


@pytest.mark.slow
def test_flex_ops_are_reported(smallnet_tflite: dict[str, Path], tmp_path: Path) -> None:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(smallnet_tflite["fp32"]))
    tanh = next(c for c in model.operatorCodes if flatbuffer_utils.get_builtin_code_from_operator_code(c) ==
                flatbuffer_utils.BuiltinOperator.TANH)
    tanh.builtinCode = tanh.deprecatedBuiltinCode = flatbuffer_utils.BuiltinOperator.CUSTOM
    tanh.customCode = b"FlexTanh"
    flex = tmp_path / "flex.tflite"
    flatbuffer_utils.write_model(model, str(flex))
    assert "FlexTanh" in tflite_ops(flex)
    with pytest.raises(NonBuiltinOpError, match="FlexTanh"):
        assert_builtin_only(flex)


@pytest.mark.slow
def test_punet_fp32_tflite_matches_torch(punet: torch.nn.Module, punet_tflite: dict[str, Path]) -> None:
    assert sorted(punet_tflite) == ["fp32"]
    assert_builtin_only(punet_tflite["fp32"])
    assert {"TRANSPOSE_CONV", "MAX_POOL_2D", "CONCATENATION"} <= set(tflite_ops(punet_tflite["fp32"]))
    assert parity_psnr(punet, punet_tflite["fp32"], raw_frames(2, 8)) >= 60


@pytest.mark.slow
def test_latency_figures(smallnet_onnx: Path, smallnet_tflite: dict[str, Path]) -> None:
    for timing in (tflite_latency_ms(smallnet_tflite["int8"], runs=5), onnx_latency_ms(smallnet_onnx, runs=5)):
        assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["p90_ms"]
        assert timing["runs"] == 5 and timing["num_threads"] == 2


@pytest.mark.slow
def test_rgb_input_model_converts_without_any_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx2tf fetches sample RGB images for 3-channel inputs unless given a local file: we give one."""
    import onnx2tf.utils.common_functions as onnx2tf_common

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"conversion tried to download {args[:1]}")

    monkeypatch.setattr(onnx2tf_common.requests, "get", no_network)
    torch.manual_seed(0)
    model = create_teacher("smallnet_clean", width=4).eval()
    cwd = Path.cwd()
    onnx_path = export_onnx(model, tmp_path / "clean.onnx", (1, 3, 32, 32))
    paths = convert_onnx_to_tflite(onnx_path, tmp_path / "out", None)
    assert Path.cwd() == cwd  # the working directory is restored
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    assert parity_psnr(model, paths["fp32"], x) >= 60.0

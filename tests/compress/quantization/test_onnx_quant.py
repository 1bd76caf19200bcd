"""ONNX Runtime QDQ INT8 / INT16 from RAW calibration frames: right types, close to the float model."""
import numpy as np
import pytest
import torch

from compress.export.onnx_export import export_onnx
from compress.quantization.onnx_quant import activation_dtypes, quantize_onnx, quantized_op_types
from compress.runtime.parity import run_onnx
from distill.metrics import psnr_db
from students import create_student

SHAPE = (1, 4, 32, 32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, object, np.ndarray]:
    torch.manual_seed(0)
    model = create_student("lwisp", width=0.125).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "lwisp.onnx", SHAPE)
    frames = np.random.default_rng(0).random((6, *SHAPE[1:]), dtype=np.float32) * 0.6
    return model, path, frames


@pytest.mark.parametrize("mode,activation_type,want", [("int8", "uint8", {"uint8"}), ("int8", "int8", {"int8"}),
                                                       ("int16", "uint8", {"int16"})])
def test_quantize_onnx_modes(tmp_path, exported, mode, activation_type, want) -> None:
    model, path, frames = exported
    out = quantize_onnx(path, tmp_path / f"{mode}.onnx", frames, mode, activation_type=activation_type)
    ops = quantized_op_types(out)
    assert ops.get("QuantizeLinear", 0) >= 10 and ops.get("DequantizeLinear", 0) > ops["QuantizeLinear"]
    assert activation_dtypes(out) == want
    float_psnr = psnr_db(run_onnx(path, frames), model(torch.from_numpy(frames)).detach().numpy())
    quant_psnr = psnr_db(run_onnx(out, frames), run_onnx(path, frames))
    assert float_psnr > 60.0
    # 16-bit activations are far closer to float than 8-bit ones; both are well above noise
    assert quant_psnr > (60.0 if mode == "int16" else 30.0)
    assert quant_psnr < 100.0  # it really is quantized


def test_int16_is_closer_to_float_than_int8(tmp_path, exported) -> None:
    _, path, frames = exported
    reference = run_onnx(path, frames)
    scores = {m: psnr_db(run_onnx(quantize_onnx(path, tmp_path / f"{m}.onnx", frames, m), frames), reference)
              for m in ("int8", "int16")}
    assert scores["int16"] > scores["int8"] + 10.0


def test_quantize_onnx_rejects_bad_input(tmp_path, exported) -> None:
    _, path, frames = exported
    with pytest.raises(ValueError, match="NCHW like the model input"):
        quantize_onnx(path, tmp_path / "x.onnx", frames[:, :3])
    with pytest.raises(ValueError, match="unknown ONNX quantization mode"):
        quantize_onnx(path, tmp_path / "x.onnx", frames, "int4")  # type: ignore[arg-type]
    assert not (tmp_path / "x.onnx").exists()

"""ONNX Runtime static QDQ quantization of an exported model, calibrated on RAW frames.

Another exported format next to TFLite, for x86 servers and desktop apps that run onnxruntime:

* ``int8``: per-channel symmetric QInt8 weights, per-tensor asymmetric 8-bit activations.  The
  activation type defaults to **QUInt8** (U8S8): ``quantize_static``'s own guidance for x86 CPUs,
  with and without VNNI, because ORT's x86 kernels (MLAS) multiply unsigned activations by signed
  weights (``vpmaddubsw`` on AVX2, ``vpdpbusd`` with VNNI); ``activation_type="int8"`` gives S8S8,
  the ARM recommendation.  ``benchmarks/quant_runtimes.py`` measures both.  ``reduce_range`` (7-bit weights)
  avoids the int16 saturation of ``vpmaddubsw`` on CPUs without VNNI, at some accuracy cost; off by
  default (the benchmark machine has AVX512-VNNI).
* ``int16``: QInt16 activations, QInt8 weights (the INT16x8 scheme of TFLite); ORT runs 16-bit QDQ
  through its ``com.microsoft`` Q/DQ ops below opset 21, in float between them: for accuracy, not speed.

Calibration is min/max over the given frames (NCHW, the model's input scaling), fed in the model's
fixed batch size; nothing else (no random data) reaches the calibrator.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

OnnxQuantMode = Literal["int8", "int16"]
ONNX_QUANT_MODES: tuple[str, ...] = ("int8", "int16")
ACTIVATION_TYPES = ("uint8", "int8")


class RawFrameReader:
    """``CalibrationDataReader`` over NCHW RAW frames, in chunks of the model's input batch size."""

    def __init__(self, input_name: str, frames: np.ndarray, batch: int) -> None:
        self.input_name, self.frames, self.batch = input_name, frames, batch
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.frames):
            return None
        idx = np.arange(self._next, self._next + self.batch) % len(self.frames)  # wrap to fill the last batch
        self._next += self.batch
        return {self.input_name: self.frames[idx]}

    def rewind(self) -> None:
        self._next = 0


def _input_info(onnx_path: Path) -> tuple[str, list[int | None]]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"ONNX quantization supports single-input models; {onnx_path} has {len(inputs)} inputs")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def quantize_onnx(
    onnx_path: Path,
    out_path: Path,
    calibration_nchw: np.ndarray,
    mode: OnnxQuantMode = "int8",
    *,
    activation_type: Literal["uint8", "int8"] = "uint8",
    reduce_range: bool = False,
    per_channel: bool = True,
) -> Path:
    """Write a QDQ-quantized copy of ``onnx_path`` to ``out_path`` and return it.

    ``mode`` ``int8`` uses ``activation_type`` for activations; ``int16`` always QInt16 activations.
    Weights are QInt8, per output channel unless ``per_channel=False``.  Raises ``ValueError`` for
    calibration frames that do not fit the model input, and leaves no ``out_path`` on failure.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if mode not in ONNX_QUANT_MODES:
        raise ValueError(f"unknown ONNX quantization mode {mode!r}; choose from {list(ONNX_QUANT_MODES)}")
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation_type must be one of {list(ACTIVATION_TYPES)}; got {activation_type!r}")
    name, dims = _input_info(onnx_path)
    frames = np.ascontiguousarray(calibration_nchw, dtype=np.float32)
    if frames.ndim != 4 or len(dims) != 4 or any(
            want is not None and got != want for got, want in zip(frames.shape[1:], dims[1:])):
        raise ValueError(f"calibration frames must be NCHW like the model input {dims}; got {frames.shape}")
    if len(frames) == 0 or not np.isfinite(frames).all():
        raise ValueError("calibration frames must be a non-empty, finite array")
    batch = dims[0] or len(frames)

    activations = {"int16": QuantType.QInt16, "int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[
        "int16" if mode == "int16" else activation_type]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".ort-quant-", dir=out_path.parent))
    try:
        prepped = work / "prepped.onnx"
        # shape inference only: ORT's graph optimiser here merely logs warnings about the shared weights of
        # modules applied twice (LW-ISP's sub-pixel conv); quantize_static optimises the graph itself
        quant_pre_process(str(onnx_path), str(prepped), skip_optimization=True, skip_symbolic_shape=True)
        built = work / "quantized.onnx"
        extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        if mode == "int16":
            extra["UseQDQContribOps"] = True  # 16-bit Q/DQ needs opset 21 or the com.microsoft ops
        quantize_static(
            str(prepped), str(built), RawFrameReader(name, frames, batch), quant_format=QuantFormat.QDQ,
            per_channel=per_channel, reduce_range=reduce_range, activation_type=activations,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, extra_options=extra,
        )
        shutil.move(str(built), str(out_path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_path


def quantized_op_types(onnx_path: Path) -> dict[str, int]:
    """How many nodes of each op type the model has (QuantizeLinear/DequantizeLinear show the QDQ pairs)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(onnx_path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def activation_dtypes(onnx_path: Path) -> set[str]:
    """Element types of every QuantizeLinear output (``uint8``, ``int8``, ``int16``): the activation types."""
    import onnx

    model = onnx.load(str(onnx_path))
    zero_points = {i.name: i.data_type for i in model.graph.initializer}
    names: dict[int | None, str] = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8",
                                    onnx.TensorProto.INT16: "int16", onnx.TensorProto.UINT16: "uint16"}
    return {names.get(zero_points.get(n.input[2]), "?") for n in model.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2}

"""Google's AI Edge Quantizer (``ai-edge-quantizer``) on an fp32 ``.tflite``: static INT8, per op type.

AEQ works on the converted fp32 flatbuffer (not on TensorFlow's graph) with its own calibration, range
algorithms and per-tensor SNR validation, and can mix 8- and 16-bit activations per op.  It is the
library the quantization benchmark compares ispdc's own range setting (``compress.quantization.ranges``,
which writes ranges into TensorFlow's quantizer) against.  What it does not do (0.10.0): quantize
PRELU, DEPTH_TO_SPACE, LEAKY_RELU or HARD_SWISH; those ops stay float between DEQUANTIZE and QUANTIZE ops, so
an AEQ model of a PixelShuffle or PReLU network is mixed precision, which ``float_ops`` reports.

ai-edge-quantizer imports TensorFlow-free LiteRT tools but is still ~1 s to import: loaded inside the functions.
"""
from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from compress.export.tflite_patches import widen_degenerate_scales

# the op types AEQ 0.10 quantizes statically that ispdc's students use; the others stay float
STATIC_OPS: tuple[str, ...] = (
    "INPUT", "OUTPUT", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE", "FULLY_CONNECTED", "ADD", "SUB", "MUL",
    "DIV", "CONCATENATION", "MEAN", "RSQRT", "SQUARED_DIFFERENCE", "TANH", "LOGISTIC", "SOFTMAX", "RESHAPE",
    "TRANSPOSE", "PAD", "PADV2", "MIRROR_PAD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE", "SLICE", "SPLIT", "MAXIMUM", "RELU", "SPACE_TO_DEPTH", "SUM",
)
# of those, the ones AEQ 0.10's policy also quantizes with 16-bit activations (int16x8); SQUARED_DIFFERENCE,
# SPACE_TO_DEPTH and HARD_SWISH have no 16-bit config there
INT16_OPS: tuple[str, ...] = tuple(op for op in STATIC_OPS if op not in {"SQUARED_DIFFERENCE", "SPACE_TO_DEPTH"})
# AEQ's only algorithm for static (weights + activations) quantization: its MSE refuses the graph INPUT and
# OCTAV is symmetric only, i.e. both are weight-only methods in 0.10.0
ALGORITHM = "min_max_uniform_quantize"


class AEQAborted(RuntimeError):
    """AI Edge Quantizer's process died (a native abort in LiteRT) before it wrote a model."""


def aeq_int8(fp32_path: Path, frames_nhwc: np.ndarray, out_path: Path, int16_ops: Sequence[str] = ()) -> Path:
    """Static INT8 (int8 weights per channel, int8 activations; ``int16_ops`` get 16-bit activations) of
    ``fp32_path`` calibrated (min/max) on ``frames_nhwc`` (the model's input layout); written to ``out_path``.

    Runs in a child process: on Smallnet-JMU, LiteRT aborted the whole process ("double free") inside AEQ's
    calibration; here that is an ``AEQAborted`` naming the model, and nothing is written."""
    unsupported = sorted(set(int16_ops) - set(INT16_OPS))
    if unsupported:
        raise ValueError(f"AI Edge Quantizer has no 16-bit activations for {', '.join(unsupported)}; "
                         f"it has for: {', '.join(INT16_OPS)}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pool.submit(_quantize, str(fp32_path), frames_nhwc, str(out_path), tuple(int16_ops)).result()
        except BrokenProcessPool:
            out_path.unlink(missing_ok=True)
            raise AEQAborted(f"AI Edge Quantizer aborted on {fp32_path} (a native crash in LiteRT); "
                             "no model was written") from None
    return out_path


def _quantize(fp32_path: str, frames_nhwc: np.ndarray, out_path: str, int16_ops: tuple[str, ...]) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(fp32_path)
    for op in STATIC_OPS:
        q.add_static_config(".*", op, activation_num_bits=16 if op in int16_ops else 8, weight_num_bits=8,
                            algorithm_key=ALGORITHM)
    interpreter = Interpreter(model_path=fp32_path)
    signature = next(iter(interpreter.get_signature_list()))
    name, detail = next(iter(interpreter.get_signature_runner(signature).get_input_details().items()))
    batch = int(detail["shape"][0]) or 1  # a fixed-batch model takes its own batch size; wrap around to fill it
    samples = [{name: frames_nhwc[np.arange(i, i + batch) % len(frames_nhwc)].astype(np.float32)}
               for i in range(0, len(frames_nhwc), batch)]
    result = q.quantize(q.calibrate({signature: samples}), enable_progress_report=False)
    result.export_model(out_path, overwrite=True)
    # an INT8 tensor of a never-firing unit (~1e-8 scale) aborts XNNPACK: the repair TF's models get
    Path(out_path).write_bytes(widen_degenerate_scales(Path(out_path).read_bytes()))


def float_ops(path: Path) -> dict[str, int]:
    """Ops of a quantized ``.tflite`` that compute in float (output tensor FLOAT32), by op type."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    counts: Counter[str] = Counter()
    for op in graph.operators:
        if graph.tensors[op.outputs[0]].type == 0:  # schema TensorType FLOAT32
            counts[flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)] += 1
    return dict(counts)

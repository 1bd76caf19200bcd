"""The shipped model at the app's frame size, from the tile model's flatbuffer.

A converted model has a fixed input (the export's tile size).  Rewriting every tensor shape of the
flatbuffer to the frame size keeps the weights and, for quantized variants, the quantization
parameters exactly the calibrated ones: no second conversion, no second calibration.  The new
shapes come from the TFLite interpreter itself (``resize_tensor_input`` + ``allocate_tensors`` on
the builtin kernels, so every tensor, not only XNNPACK's boundary tensors, gets its shape).  A model
whose graph bakes a shape in (a ``RESHAPE`` with a constant shape, ...) fails to resize; the caller
then converts the ONNX model exported at the frame size instead (``FrameResizeError``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class FrameResizeError(ValueError):
    """The tile model cannot be resized to the frame size by rewriting its shapes."""


def _resized_interpreter(path: Path, packed_hw: tuple[int, int], builtin: bool, num_threads: int = 1):  # noqa: ANN202
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else OpResolverType.AUTO
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads, experimental_op_resolver_type=resolver)
    inputs = interpreter.get_input_details()
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise FrameResizeError(f"{path}: expected one NHWC input, got {[list(d['shape']) for d in inputs]}")
    batch, _, _, channels = (int(d) for d in inputs[0]["shape"])
    try:
        interpreter.resize_tensor_input(inputs[0]["index"], [batch, *packed_hw, channels], strict=False)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0].split("Node number")[0].strip()  # TFLite glues the node line on
        raise FrameResizeError(f"{path}: the interpreter cannot resize the input to {list(packed_hw)}: "
                               f"{reason}") from None
    return interpreter


def resize_tflite(src: Path, dest: Path, packed_hw: tuple[int, int], upscale: int = 2) -> Path:
    """Write ``src`` with its input at ``packed_hw`` (and every tensor re-shaped to match) to ``dest``.

    Raises ``FrameResizeError`` when the interpreter refuses the new size or the output is not
    ``upscale`` times the packed size (a graph with baked shapes).
    """
    from ai_edge_litert.tools import flatbuffer_utils

    interpreter = _resized_interpreter(Path(src), packed_hw, builtin=True)
    shapes = {int(d["index"]): [int(v) for v in d["shape"]] for d in interpreter.get_tensor_details()}
    out_shape = [int(v) for v in interpreter.get_output_details()[0]["shape"]]
    expected = [packed_hw[0] * upscale, packed_hw[1] * upscale]
    if out_shape[1:3] != expected:
        raise FrameResizeError(f"{src}: resized to {list(packed_hw)} packed, the output is {out_shape[1:3]}, "
                               f"not {expected}: the graph has baked shapes")
    model = flatbuffer_utils.read_model(str(src))
    if len(model.subgraphs) != 1:
        raise FrameResizeError(f"{src}: {len(model.subgraphs)} subgraphs; only single-graph models are resized")
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        if index in shapes and tensor.shape is not None and list(tensor.shape) != shapes[index]:
            tensor.shape = np.asarray(shapes[index], dtype=np.int32)
            if tensor.shapeSignature is not None:
                tensor.shapeSignature = np.asarray(shapes[index], dtype=np.int32)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    flatbuffer_utils.write_model(model, str(dest))
    return Path(dest)


def _invoke(interpreter, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def matches_resized(tile: Path, frame: Path, seed: int = 0) -> bool:
    """True when ``frame`` gives bit for bit the output of ``tile`` resized in the interpreter (XNNPACK,
    one thread, random input of the model's own dtype): the rewrite changed nothing but shapes."""
    from ai_edge_litert.interpreter import Interpreter

    fixed = Interpreter(model_path=str(frame), num_threads=1)
    fixed.allocate_tensors()
    detail = fixed.get_input_details()[0]
    shape = tuple(int(d) for d in detail["shape"])
    dtype = np.dtype(detail["dtype"])
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        x = rng.random(shape, dtype=np.float32).astype(dtype)
    resized = _resized_interpreter(Path(tile), (shape[1], shape[2]), builtin=False)
    return bool(np.array_equal(_invoke(fixed, x), _invoke(resized, x)))


def reflect_into_frame(raw_chw: np.ndarray, packed_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A packed image (C, h, w) reflect-padded (or centre-cropped) to ``packed_hw``, and the box
    ``(top, left, h, w)`` of the image's pixels that the frame holds at its top-left corner (the
    output's ``[:2h, :2w]`` is theirs; ``top``/``left`` > 0 only when the image is larger than the frame)."""
    c, h, w = raw_chw.shape
    fh, fw = packed_hw
    top, left = max(0, (h - fh) // 2), max(0, (w - fw) // 2)
    raw = raw_chw[:, top : top + fh, left : left + fw]
    ih, iw = raw.shape[1:]
    while raw.shape[1] < fh or raw.shape[2] < fw:  # reflect repeatedly when the frame is over twice the image
        ph, pw = min(fh - raw.shape[1], raw.shape[1] - 1), min(fw - raw.shape[2], raw.shape[2] - 1)
        raw = np.pad(raw, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    return np.ascontiguousarray(raw[:c, :fh, :fw]), (top, left, ih, iw)

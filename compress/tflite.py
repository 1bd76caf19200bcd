"""ONNX -> TFLite (fp32 and post-training quantized) through onnx2tf, plus op and I/O inspection.

onnx2tf only builds the NHWC Keras graph; the TFLite files come from our own ``TFLiteConverter``
calls.  That keeps calibration under our control (the RAW frames given, never onnx2tf's default RGB
set), restricts every model to TFLite builtin ops (a Flex op fails the conversion instead of failing
later on a phone), and makes each quantization mode one small converter setting.

TensorFlow and onnx2tf cost ~10 s and ~700 MB to import, so they are imported inside the functions
that convert; inspecting a finished ``.tflite`` needs only ai-edge-litert.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# mode -> needs calibration frames.  fp32 is always written; the others on request.
# dynamic: dynamic-range quantization (int8 weights, float activations quantized on the fly per op).
QUANT_MODES: dict[str, bool] = {"int8": True, "int16x8": True, "float16": False, "dynamic": False}
LOG_TAIL_CHARS = 4000


class ConversionError(RuntimeError):
    """An ONNX file could not be turned into TFLite; the message names the file and the cause."""


class NonBuiltinOpError(ValueError):
    """A ``.tflite`` uses Flex (TF Select) or custom ops, which stock runtimes and delegates lack."""


def convert_onnx_to_tflite(
    onnx_path: Path,
    out_dir: Path,
    calibration_nchw: np.ndarray | None,
    int8_io: bool = True,
    modes: Sequence[str] | None = None,
    extra: ExtraBuild | None = None,
) -> dict[str, Path]:
    """Convert ``onnx_path`` to ``{stem}_fp32.tflite`` and quantized variants in ``out_dir``.

    ``modes`` picks the quantized variants from ``QUANT_MODES``; by default ``("int8",)`` when
    calibration frames are given, else none.  ``calibration_nchw`` are packed RAW frames shaped like
    the model input (NCHW, same scaling as at inference); they are transposed to NHWC and are the
    only data the calibrated modes see.  ``int8_io`` gives the ``int8`` model int8 input/output so an
    app feeds the quantized tensor directly; otherwise it keeps float I/O with quantize/dequantize
    ops inside.  ``int16x8``, ``float16`` and ``dynamic`` always have float I/O.

    ``extra(factory, built, work)`` runs after the modes, inside the same onnx2tf run: it gets the
    ``ConverterFactory``, the files built so far and the work folder, and returns more ``{key: path}``
    files (written in ``work``) that are moved into ``out_dir`` with the others; selective precision
    (``compress.selective``) uses it to reuse the Keras graph instead of converting the ONNX file again.

    Returns ``{"fp32": path, mode: path, ...}``.  Everything is built in a temporary folder and moved
    into ``out_dir`` only when every requested file converted, so a failure leaves no ``.tflite``.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    modes = tuple(modes) if modes is not None else (("int8",) if calibration_nchw is not None else ())
    unknown = [m for m in modes if m not in QUANT_MODES]
    if unknown:
        raise ValueError(f"unknown TFLite mode(s) {unknown}; choose from {sorted(QUANT_MODES)}")
    needs_frames = [m for m in modes if QUANT_MODES[m]]
    if needs_frames and calibration_nchw is None:
        raise ValueError(f"TFLite mode(s) {needs_frames} need calibration frames; got calibration_nchw=None")

    onnx_inputs = _onnx_input_shapes(onnx_path)
    wants_frames = needs_frames or (extra is not None and calibration_nchw is not None)
    frames = _check_calibration(calibration_nchw, onnx_inputs, onnx_path) if wants_frames else None

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tflite-build-", dir=out_dir))
    try:
        failure: BaseException | None = None
        with _captured_output(work / "convert.log") as log_path:
            try:
                built = _build_all(onnx_path, work, frames, int8_io, modes, extra)
            except ImportError:
                raise
            except (Exception, SystemExit) as exc:  # onnx2tf reports many errors with sys.exit(1)
                failure = exc
        if failure is not None:
            tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
            detail = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
            raise ConversionError(
                f"could not convert ONNX file {onnx_path} to TFLite ({detail})"
                + (f"\n--- converter output (tail) ---\n{tail}" if tail else "")
            ) from failure
        result: dict[str, Path] = {}
        for key, tmp_file in built.items():
            final = out_dir / f"{onnx_path.stem}_{key}.tflite"
            os.replace(tmp_file, final)
            result[key] = final
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _onnx_input_shapes(onnx_path: Path) -> list[tuple[str, tuple[int | None, ...]]]:
    """Names and NCHW shapes of the graph inputs; an unreadable file is a ``ConversionError``."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ConversionError(f"could not convert ONNX file {onnx_path} to TFLite: not a valid ONNX model "
                              f"({type(exc).__name__}: {exc})") from exc
    init_names = {i.name for i in model.graph.initializer}
    shapes = []
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim)
        shapes.append((inp.name, dims))
    return shapes


def _check_calibration(frames: np.ndarray | None, inputs: list[tuple[str, tuple[int | None, ...]]],
                       onnx_path: Path) -> np.ndarray:
    """Calibration must match the single 4-D model input (C, H, W) and be finite: NHWC float32 out."""
    if len(inputs) != 1:
        raise ValueError(f"calibration supports single-input models; {onnx_path} has {len(inputs)} inputs")
    frames = np.asarray(frames)
    _, shape = inputs[0]
    if frames.ndim != 4 or len(shape) != 4 or any(
            want is not None and got != want for got, want in zip(frames.shape[1:], shape[1:])):
        raise ValueError(f"calibration frames must be NCHW like the model input {shape}; got {frames.shape}")
    if len(frames) == 0 or not np.isfinite(frames).all():
        raise ValueError("calibration frames must be a non-empty, finite array")
    return np.ascontiguousarray(frames.transpose(0, 2, 3, 1), dtype=np.float32)


@contextlib.contextmanager
def _captured_output(log_path: Path) -> Iterator[Path]:
    """Send stdout/stderr (Python and C++ alike) to ``log_path`` while converting.

    TensorFlow's MLIR converter and onnx2tf print pages of progress from C++ and Python; on success
    nobody needs it, and on failure its tail is the only place the cause is written.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no OS-level stdout/stderr (some daemons): capture Python's output only
        saved = []
    with open(log_path, "w", buffering=1) as log:
        try:
            for fd in (1, 2)[: len(saved)]:
                os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log_path
        finally:
            _flush_c_stdio()
            for fd, original in zip((1, 2), saved):
                os.dup2(original, fd)
                os.close(original)


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers so converter printf output lands in the log, not on the console later."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@dataclass
class ConverterFactory:
    """Fresh, configured ``TFLiteConverter``s from one onnx2tf run (a converter converts once).

    ``frames`` are the NHWC calibration frames (None when no calibrated mode was asked for) and
    ``int_io`` the ``int8`` mode's I/O choice; ``finish`` gives a converted flatbuffer the ONNX I/O names.
    """

    tf: Any
    concrete: Any
    keras_model: Any
    input_names: list[str]
    output_names: list[str]
    frames: np.ndarray | None
    int_io: bool

    @property
    def batch(self) -> int:
        return int(self.keras_model.inputs[0].shape[0] or 1)

    def converter(self, mode: str) -> Any:
        converter = self.tf.lite.TFLiteConverter.from_concrete_functions([self.concrete], self.keras_model)
        _configure(self.tf, converter, mode, self.frames, self.int_io, batch=self.batch)
        return converter

    def representative(self) -> Callable[[], Iterator[list[np.ndarray]]]:
        """The calibration frames as a representative dataset (batches of the model's batch size)."""
        if self.frames is None:
            raise ValueError("no calibration frames were given to the conversion")
        return _representative(self.frames, self.batch)

    def finish(self, flatbuffer: bytes) -> bytes:
        renamed = _rename_io(flatbuffer, self.input_names, self.output_names)
        return requantize_biases(snap_leaky_relu_scales(widen_degenerate_scales(renamed)))


ExtraBuild = Callable[[ConverterFactory, dict[str, Path], Path], dict[str, Path]]


def _build_all(onnx_path: Path, work: Path, frames: np.ndarray | None, int_io: bool,
               modes: Sequence[str], extra: ExtraBuild | None = None) -> dict[str, Path]:
    """Keras graph via onnx2tf once, then one TFLite file per mode (and any ``extra`` ones) in ``work``."""
    import tensorflow as tf

    keras_model, input_names, output_names = _onnx_to_keras(onnx_path, work)
    spec = [tf.TensorSpec(t.shape, t.dtype, name=name) for t, name in zip(keras_model.inputs, input_names)]

    def serve(*xs: Any) -> dict[str, Any]:
        ys = keras_model(list(xs) if len(xs) > 1 else xs[0])
        ys = ys if isinstance(ys, (list, tuple)) else [ys]
        return dict(zip(output_names, ys))

    concrete = tf.function(serve, input_signature=spec).get_concrete_function()
    factory = ConverterFactory(tf, concrete, keras_model, input_names, output_names, frames, int_io)
    built: dict[str, Path] = {}
    for key in ("fp32", *modes):
        flatbuffer = factory.finish(factory.converter(key).convert())
        built[key] = work / f"{key}.tflite"
        built[key].write_bytes(flatbuffer)
    if extra is not None:
        added = extra(factory, dict(built), work)
        clash = sorted(set(added) & set(built))
        if clash:
            raise ValueError(f"extra TFLite builds reuse the keys {clash}")
        built.update(added)
    return built


ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


@contextlib.contextmanager
def _no_sample_data_download(work: Path) -> Iterator[None]:
    """Keep onnx2tf from downloading its sample images for models with a 3-channel 4-D input.

    onnx2tf 1.28 fetches ``ONNX2TF_SAMPLE_FILE`` from GitHub for any model whose input looks like a
    batch of RGB images (our clean-image teachers) unless that file is in the current directory; it
    only uses the images for its own ONNX-vs-TF checks, never for our calibration.  Offline that
    download fails the conversion, and we never download at run time: so a local file of the same
    shape (seeded uniform noise in [0, 1]) is put in the work folder, which is the current directory
    while onnx2tf runs.
    """
    np.save(work / ONNX2TF_SAMPLE_FILE, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    previous = os.getcwd()
    os.chdir(work)
    try:
        yield
    finally:
        os.chdir(previous)


def _onnx_to_keras(onnx_path: Path, work: Path) -> tuple[Any, list[str], list[str]]:
    """onnx2tf's NHWC Keras model of a simplified copy of ``onnx_path`` (onnx2tf edits files in place).

    onnxsim runs through its Python API here: onnx2tf's own step shells out to an ``onnxsim``
    executable that is missing from PATH whenever the virtualenv is not activated.  Every variant is
    built from the same graph, after ``compress.graph_rewrites.untie_shared_reduce_extrema`` (exact in
    float: a channel max read from a shared tensor otherwise makes the INT8 quantizer clip that tensor
    to the max's range; it cost LW-ISP 0.55 dB).
    """
    import onnx
    import onnx2tf
    import onnxsim

    from compress.graph_rewrites import untie_shared_reduce_extrema

    model = onnx.load(str(onnx_path))
    try:
        simplified, ok = onnxsim.simplify(model)
        model = simplified if ok else model
    except Exception:  # simplification is an optimisation; onnx2tf copes with the original graph
        pass
    untie_shared_reduce_extrema(model)  # exact; keeps the INT8 quantizer from clipping a shared tensor
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    input_names = [i.name for i in inputs]
    output_names = [o.name for o in model.graph.output]
    copy = work / "model.onnx"
    onnx.save(model, str(copy))
    with _no_sample_data_download(work):
        keras_model = onnx2tf.convert(
            input_onnx_file_path=str(copy), output_folder_path=str(work / "onnx2tf"), disable_model_save=True,
            not_use_onnxsim=True, non_verbose=True, verbosity="error",
        )
    if keras_model is None:
        raise RuntimeError("onnx2tf returned no model")
    for inp, tensor in zip(inputs, keras_model.inputs):
        dims = [d.dim_value or None for d in inp.type.tensor_type.shape.dim]
        if len(dims) == 4 and list(tensor.shape) != [dims[0], dims[2], dims[3], dims[1]]:
            raise RuntimeError(f"onnx2tf gave input {inp.name} shape {tuple(tensor.shape)}, not NHWC of {dims}")
    return keras_model, input_names, output_names


def _configure(tf: Any, converter: Any, mode: str, frames: np.ndarray | None, int_io: bool, batch: int) -> None:
    """Converter settings per mode; builtin ops only, so a Flex op is a conversion error, not a surprise."""
    if mode == "fp32":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "dynamic":  # no representative dataset: int8 weights, activations stay float
        # (TFLite leaves weight tensors under 1024 elements in float: a tiny model barely changes)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return
    assert frames is not None
    converter.representative_dataset = _representative(frames, batch)
    if mode == "int8":  # per-channel int8 weights (converter default), per-tensor int8 activations
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8 if int_io else tf.float32
        converter.inference_output_type = tf.int8 if int_io else tf.float32
    elif mode == "int16x8":  # int16 activations, int8 weights; no XNNPACK kernels: slow on CPU
        # TFLite's 16x8 quantizer lacks some ops (DEPTH_TO_SPACE in TF 2.21): those stay float,
        # wrapped in QUANTIZE/DEQUANTIZE, instead of failing the whole conversion.  A float op can
        # sit at the output, so this mode keeps float I/O.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS]
    else:
        raise ValueError(f"unknown TFLite mode {mode!r}")


def _representative(frames: np.ndarray, batch: int) -> Any:
    """Calibration batches of the model's fixed batch size, wrapping around to fill the last one."""
    def generate() -> Iterator[list[np.ndarray]]:
        for start in range(0, len(frames), batch):
            idx = np.arange(start, start + batch) % len(frames)
            yield [frames[idx]]
    return generate


def _rename_io(flatbuffer: bytes, input_names: Sequence[str], output_names: Sequence[str]) -> bytes:
    """Give the TFLite I/O tensors the ONNX names (``raw``/``rgb``) instead of ``serving_default_raw:0``."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    for index, name in [*zip(graph.inputs, input_names), *zip(graph.outputs, output_names)]:
        graph.tensors[index].name = name.encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# op -> (input, weight, bias) operand positions of the ops whose bias scale must be input x weight scale
_BIASED_OPS = {"CONV_2D": (0, 1, 2), "DEPTHWISE_CONV_2D": (0, 1, 2), "FULLY_CONNECTED": (0, 1, 2),
               "TRANSPOSE_CONV": (2, 1, 3)}
_BIAS_DTYPES = {2: np.int32, 4: np.int64}  # schema TensorType INT32, INT64


XNNPACK_MAX_REQUANT = 256.0  # XNNPACK rejects a quantized conv whose input x weight / output scale is not below this


def widen_degenerate_scales(flatbuffer: bytes) -> bytes:
    """Raise an output scale that is far finer than the accumulator that produces it.

    A ReLU unit that never fires on the calibration frames (LW-ISP's channel-attention bottleneck at
    width 0.25 has one hidden unit) is calibrated to the range [0, 0]; the quantizers then give it a
    scale of ~1e-8 (int8, MLIR) or a denormal ~1e-43 (16x8).  The requantization multiplier
    ``input_scale * weight_scale / output_scale`` of the op producing it is then ~1e4 (int8) to
    ~1e36, which XNNPACK rejects: the interpreter aborts ("double free or corruption", ai-edge-litert
    2.3) and TF's quantization debugger fails to prepare.  For such a tensor (multiplier at least
    ``XNNPACK_MAX_REQUANT``, produced by a conv / fully connected op and read only as the data input
    of such ops, or by a DEQUANTIZE in front of a layer selective precision keeps in float) the output
    scale becomes ``input_scale * max(weight_scale)``, one accumulator step: zero (the only calibrated
    value, zero point kept) stays exact, nothing finer than the accumulator is lost, and the range
    only grows.  The readers' biases are re-scaled by ``requantize_biases``.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    changed = False
    for graph in model.subgraphs:
        names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
        readers: dict[int, list[tuple[str, int]]] = {}
        for name, op in zip(names, graph.operators):
            for slot, index in enumerate(op.inputs):
                readers.setdefault(int(index), []).append((name, slot))
        outputs = {int(i) for i in graph.outputs}
        for name, op in zip(names, graph.operators):
            if name not in _BIASED_OPS or len(op.outputs) != 1:
                continue
            x, w = (int(op.inputs[i]) for i in _BIASED_OPS[name][:2])
            out = int(op.outputs[0])
            xq, wq, oq = (graph.tensors[t].quantization for t in (x, w, out))
            if any(q is None or q.scale is None or len(q.scale) == 0 for q in (xq, wq, oq)) or len(oq.scale) != 1:
                continue
            step = float(xq.scale[0]) * float(np.max(wq.scale))
            if not step > 0 or float(oq.scale[0]) * XNNPACK_MAX_REQUANT > step:
                continue
            if out in outputs or not all((r in _BIASED_OPS and slot == _BIASED_OPS[r][0]) or r == "DEQUANTIZE"
                                         for r, slot in readers.get(out, [])):  # readers that take any scale
                continue
            oq.scale = np.asarray([step], dtype=np.float32)
            changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else flatbuffer


XNNPACK_LRELU_ONE = 256  # XNNPACK's QS8 leaky ReLU multipliers are round(256 * ratio): 8 fractional bits
_INT8 = 9  # schema TensorType INT8
# ops whose kernels read an int8 input at its own scale (the data input of convs: their biases are then
# re-scaled by requantize_biases); same-scale ops (max pool, concat, reshape) are not here
_ANY_SCALE_READERS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 0, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 2, "ADD": None,
                      "SUB": None, "MUL": None, "MEAN": None, "LOGISTIC": None, "TANH": None, "DEQUANTIZE": None,
                      "QUANTIZE": None}


def snap_leaky_relu_scales(flatbuffer: bytes) -> bytes:
    """Give each INT8 LEAKY_RELU an output scale at which XNNPACK's multipliers are exact.

    XNNPACK computes an int8 leaky ReLU with the multipliers ``round(256 * s_in / s_out)`` and
    ``round(256 * alpha * s_in / s_out)``: 8 fractional bits, so the slope of each branch is off by up
    to 0.5 / 256 of ``s_in / s_out`` (a lone int8 leaky ReLU measured -0.21 steps off at the top of
    its positive range, a ~0.1 % gain error; LW-ISP w0.25's 31 of them added up to a +2e-3 output
    offset and 0.09 dB).  This raises ``s_out`` just enough (at most ~2 %, the range only grows) that
    ``256 * s_in / s_out`` is a multiple of alpha's denominator (5 for 0.2), so both products are
    integers and XNNPACK's arithmetic is exact.  TFLite's builtin kernels use 32-bit multipliers and
    do not need it.  Only where every reader takes any input scale (``_ANY_SCALE_READERS``) and the
    tensor is not a model output; the readers' biases are re-scaled by ``requantize_biases``.
    """
    from fractions import Fraction

    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    changed = False
    for graph in model.subgraphs:
        names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
        readers: dict[int, list[tuple[str, int]]] = {}
        for name, op in zip(names, graph.operators):
            for slot, index in enumerate(op.inputs):
                readers.setdefault(int(index), []).append((name, slot))
        outputs = {int(i) for i in graph.outputs}
        for name, op in zip(names, graph.operators):
            if name != "LEAKY_RELU":
                continue
            x, out = int(op.inputs[0]), int(op.outputs[0])
            xq, oq = graph.tensors[x].quantization, graph.tensors[out].quantization
            if (graph.tensors[x].type != _INT8 or graph.tensors[out].type != _INT8 or out in outputs
                    or any(q is None or q.scale is None or len(q.scale) != 1 for q in (xq, oq))):
                continue
            if not all(r in _ANY_SCALE_READERS and _ANY_SCALE_READERS[r] in (None, slot)
                       for r, slot in readers.get(out, [])):
                continue
            step = Fraction(float(op.builtinOptions.alpha)).limit_denominator(64).denominator
            ratio = XNNPACK_LRELU_ONE * float(xq.scale[0]) / float(oq.scale[0])
            snapped = (ratio // step) * step
            if snapped < step or snapped == ratio:
                continue
            oq.scale = np.asarray([XNNPACK_LRELU_ONE * float(xq.scale[0]) / snapped], dtype=np.float32)
            changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else flatbuffer


def requantize_biases(flatbuffer: bytes) -> bytes:
    """Give every quantized conv / fully connected op a bias quantized at its own input x weight scale.

    TFLite's 16x8 quantizer (``calibrate_and_quantize``, TF 2.21) quantizes a bias tensor that two ops
    share (one PyTorch module applied twice, e.g. LW-ISP's shared CCB sub-pixel conv) once, with the
    *first* op's input scale, and the second op reads it as if at its own: its bias comes out scaled
    by the ratio of the two input scales (a silent error of up to ~6x here).  The kernels add the raw
    integer bias to the ``input_scale * weight_scale`` accumulator, so this rewrite gives each op
    whose bias scale differs from that product its own correctly scaled copy (real value kept up to
    the rounding of the old scale, which is finer than one accumulator step).  Models where every
    bias already fits (the int8 MLIR quantizer duplicates shared biases itself) come back unchanged.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    changed = False
    for graph in model.subgraphs:
        uses: dict[int, int] = {}
        for op in graph.operators:
            for index in op.inputs:
                uses[int(index)] = uses.get(int(index), 0) + 1
        for op in graph.operators:
            name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            if name not in _BIASED_OPS or len(op.inputs) <= _BIASED_OPS[name][2]:
                continue
            slots = _BIASED_OPS[name]
            x, w, b = (int(op.inputs[i]) for i in slots)
            if min(x, w, b) < 0:
                continue
            xq, wq, bias = graph.tensors[x].quantization, graph.tensors[w].quantization, graph.tensors[b]
            dtype = _BIAS_DTYPES.get(bias.type)
            if (dtype is None or bias.quantization is None or xq is None or wq is None or xq.scale is None
                    or wq.scale is None or bias.quantization.scale is None or len(xq.scale) != 1):
                continue
            stored = np.asarray(bias.quantization.scale, dtype=np.float64)
            wanted = float(xq.scale[0]) * np.asarray(wq.scale, dtype=np.float64)
            data = model.buffers[bias.buffer].data
            if data is None or len(stored) != len(wanted) or np.allclose(stored, wanted, rtol=1e-5, atol=0):
                continue
            values = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=dtype).astype(np.float64)
            info = np.iinfo(dtype)
            ints = np.clip(np.round(values * stored / wanted), info.min, info.max).astype(dtype)
            quant = copy.deepcopy(bias.quantization)
            quant.scale = wanted.astype(np.float32)
            buffer = flatbuffer_utils.BufferT()  # a new buffer: the old one may back other tensors
            buffer.data = np.frombuffer(ints.tobytes(), dtype=np.uint8)
            model.buffers.append(buffer)
            if uses.get(b, 0) > 1:  # shared tensor: this op gets its own
                uses[b] -= 1
                bias = copy.deepcopy(bias)
                bias.name = (bias.name or b"bias") + f"_requantized{len(graph.tensors)}".encode()
                graph.tensors.append(bias)
                inputs = np.array(op.inputs, copy=True)  # the object API's arrays are read-only views
                inputs[slots[2]] = len(graph.tensors) - 1
                op.inputs = inputs
            bias.buffer, bias.quantization = len(model.buffers) - 1, quant
            changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else flatbuffer


def _op_codes(path: Path) -> list[tuple[str, bool]]:
    """(name, is_builtin) per operator, in execution order, read from the flatbuffer (no interpreter:
    a model with Flex ops cannot even be loaded without the TF Select delegate)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(o).OpcodeIndex())
            builtin = flatbuffer_utils.get_builtin_code_from_operator_code(code)
            if builtin == schema.BuiltinOperator.CUSTOM:
                ops.append(((code.CustomCode() or b"CUSTOM").decode(), False))
            else:
                ops.append((names.get(builtin, f"BUILTIN_{builtin}"), True))
    return ops


def tflite_ops(path: Path) -> list[str]:
    """Op names per operator in execution order (builtins as ``CONV_2D``; custom/Flex by custom code)."""
    return [name for name, _ in _op_codes(path)]


def assert_builtin_only(path: Path) -> None:
    """Raise ``NonBuiltinOpError`` if ``path`` uses Flex or custom ops."""
    others = sorted({name for name, builtin in _op_codes(path) if not builtin})
    if others:
        raise NonBuiltinOpError(f"{path} uses non-builtin ops {others}: stock TFLite runtimes and delegates "
                                f"cannot run them")


def tflite_io_details(path: Path) -> dict[str, list[dict[str, Any]]]:
    """JSON-ready ``{"inputs": [...], "outputs": [...]}``: name, shape, dtype, scale, zero_point.

    ``scale``/``zero_point`` are None for float tensors: a quantized tensor means
    ``real = scale * (q - zero_point)``.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def describe(detail: dict[str, Any]) -> dict[str, Any]:
        scale, zero_point = detail["quantization"]
        quantized = scale != 0.0
        return {
            "name": str(detail["name"]),
            "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale) if quantized else None,
            "zero_point": int(zero_point) if quantized else None,
        }

    return {"inputs": [describe(d) for d in interpreter.get_input_details()],
            "outputs": [describe(d) for d in interpreter.get_output_details()]}

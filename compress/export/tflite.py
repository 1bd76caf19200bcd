"""ONNX -> TFLite (fp32 and post-training quantized) through onnx2tf.

onnx2tf only builds the NHWC Keras graph; the TFLite files come from our own ``TFLiteConverter``
calls.  That keeps calibration under our control (the RAW frames given, never onnx2tf's default RGB
set), restricts every model to TFLite builtin ops (a Flex op fails the conversion instead of failing
later on a phone), and makes each quantization mode one small converter setting.

TensorFlow and onnx2tf cost ~10 s and ~700 MB to import, so they are imported inside the functions
that convert (onnx, ~0.6 s, comes with ``compress.export.graph_rewrites``).  Every converted flatbuffer
goes through the repairs of ``compress.export.tflite_patches``; inspecting a finished ``.tflite`` is
``compress.export.tflite_inspect`` (ai-edge-litert only).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.export.graph_rewrites import untie_shared_reduce_extrema
from compress.export.tflite_patches import finish_flatbuffer

# mode -> needs calibration frames.  fp32 is always written; the others on request.
# dynamic: dynamic-range quantization (int8 weights, float activations quantized on the fly per op).
QUANT_MODES: dict[str, bool] = {"int8": True, "int16x8": True, "float16": False, "dynamic": False}
LOG_TAIL_CHARS = 4000


class ConversionError(RuntimeError):
    """An ONNX file could not be turned into TFLite; the message names the file and the cause."""


def convert_onnx_to_tflite(
    onnx_path: Path,
    out_dir: Path,
    calibration_nchw: np.ndarray | None,
    int8_io: bool = True,
    modes: Sequence[str] | None = None,
    extra: ExtraBuild | None = None,
    untie_reduce_extrema: bool = True,
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
    (``compress.quantization.selective``) uses it to reuse the Keras graph instead of converting the ONNX file again.

    ``untie_reduce_extrema=False`` skips ``compress.export.graph_rewrites.untie_shared_reduce_extrema``
    and converts the graph as plain onnx2tf + TFLite leave it: only to measure what that rewrite is
    worth (``benchmarks.quant_runtimes``'s ``lwisp_tied``: LW-ISP w0.25 int8 PTQ loses ~1.26 dB without it).

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
                built = _build_all(onnx_path, work, frames, int8_io, modes, extra, untie_reduce_extrema)
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
            final = out_dir / f"{onnx_path.stem}_{re.sub(r'[^A-Za-z0-9_.+ -]+', '_', key)}.tflite"  # key "a/b"
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
        return finish_flatbuffer(flatbuffer, self.input_names, self.output_names)


ExtraBuild = Callable[[ConverterFactory, dict[str, Path], Path], dict[str, Path]]


def _build_all(onnx_path: Path, work: Path, frames: np.ndarray | None, int_io: bool,
               modes: Sequence[str], extra: ExtraBuild | None = None, untie: bool = True) -> dict[str, Path]:
    """Keras graph via onnx2tf once, then one TFLite file per mode (and any ``extra`` ones) in ``work``."""
    import tensorflow as tf

    keras_model, input_names, output_names = _onnx_to_keras(onnx_path, work, untie)
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


def _onnx_to_keras(onnx_path: Path, work: Path, untie: bool = True) -> tuple[Any, list[str], list[str]]:
    """onnx2tf's NHWC Keras model of a simplified copy of ``onnx_path`` (onnx2tf edits files in place).

    onnxsim runs through its Python API here: onnx2tf's own step shells out to an ``onnxsim``
    executable that is missing from PATH whenever the virtualenv is not activated.  Every variant is
    built from the same graph, after ``compress.export.graph_rewrites.untie_shared_reduce_extrema`` (exact in
    float: a channel max read from a shared tensor otherwise makes the INT8 quantizer clip that tensor
    to the max's range; it cost LW-ISP 0.55 dB) unless ``untie`` is off.
    """
    import onnx
    import onnx2tf
    import onnxsim

    model = onnx.load(str(onnx_path))
    try:
        simplified, ok = onnxsim.simplify(model)
        model = simplified if ok else model
    except Exception:  # simplification is an optimisation; onnx2tf copes with the original graph
        pass
    if untie:
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

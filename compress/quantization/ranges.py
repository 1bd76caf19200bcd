"""Activation ranges for TFLite INT8 beyond min/max: read, search and write the ranges TFLite quantizes with.

TensorFlow's INT8 quantizer works in two steps: calibration runs the float model on the representative
frames and stores each activation tensor's min and max in the flatbuffer (``QuantizationParameters.min``
/ ``max``), then ``mlir_quantize`` turns those ranges into scales and zero points, re-scales biases and
applies the scale ties (concatenation, max pooling, depth to space, reshape).  Between the two steps the
ranges are plain numbers in a float model, so a range chosen by any method is carried into the shipped
INT8 tensors *by TFLite's own quantizer*: same ops, same kernels, same patches
(``compress.export.tflite_patches``) as the min/max build.  That is how ispdc sets ranges:

- ``minmax``: each tensor's min and max over the calibration frames, *as the float model computes them*.
  TFLite's calibrator is not that: it logs an op's input tensors after the op ran, and an op that runs in
  place (elementwise ``SUB``, ``MUL``, ``ADD`` ... in a chain) has by then overwritten its input with its
  output, so that input's logged range is the union of both.  Measured on instance norm
  (``SUB -> MUL(gamma) -> MUL(1/std) -> ADD(beta)``): the ``(x - mean) * gamma`` tensor, values within
  +-0.18, was calibrated to [-4.07, 3.68] (the next op's output), 25x too wide, and the INT8 model's parity
  fell to 21 dB against 35 dB with the tensors' own ranges; 88 of PyNET-V2 Mobile's 392 calibrated tensors
  are overstated this way.  So ``minmax`` re-measures every range on the float model with all tensors kept
  (no buffer is reused), and ``calibrator_overstated`` counts what it corrected;
- ``calibrator``: the ranges as TFLite's calibrator logged them, i.e. the stock converter's INT8 model;
- ``percentile``: each tensor clipped to its ``percentile`` / ``100 - percentile`` values over the
  calibration frames (TensorRT's and AIMET's percentile calibration);
- ``mse``: each tensor's range shrunk to the one that minimises the mean squared error of quantizing
  its calibration values (AIMET's and AI Edge Quantizer's MSE range setting, per activation here);
- ``given``: ranges from elsewhere, by tensor name (the learned ranges of ``compress.quantization.qat``).

Model inputs keep their calibrated range (the RAW input range is the sensor's, not a statistic to clip),
and outputs of ops with fixed INT8 parameters (LOGISTIC, TANH) are left alone: the quantizer ignores
their ranges.  A range always contains zero, as TFLite's quantizer requires.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from compress.quantization.selective import quantize_with_float_layers

RangeMethod = Literal["minmax", "calibrator", "percentile", "mse"]
RANGE_METHODS: tuple[str, ...] = ("minmax", "calibrator", "percentile", "mse")
FIXED_RANGE_OPS = {"LOGISTIC", "TANH", "SOFTMAX"}
SAMPLE_VALUES = 1 << 18  # values per tensor the searches see (a seeded subsample of larger tensors)
MSE_GRID = 48  # shrink factors tried per side by the MSE search
NORM_STATS_OPS = ("MEAN", "SQUARED_DIFFERENCE", "RSQRT")
"""Instance norm's statistics in TFLite: at INT8 per tensor they cost PyNET-V2 Mobile most of its loss
(docs/quantization.md, 'Choosing an INT8 method'); ``quantize.float_ops`` keeps them in float."""


def norm_stats_advice(int8_ops: Sequence[str], float_ops: Sequence[str], ranges: str) -> str | None:
    """What to change when an int8 model that normalizes by its own statistics (instance norm: a
    SQUARED_DIFFERENCE and an RSQRT) misses its budget; None when the model has none or they are float."""
    missing = [op for op in NORM_STATS_OPS if op not in float_ops]
    if not {"SQUARED_DIFFERENCE", "RSQRT"} <= set(int8_ops) or not {"SQUARED_DIFFERENCE", "RSQRT"} & set(missing):
        return None
    steps = [f"quantize.float_ops: [{', '.join(NORM_STATS_OPS)}]"] + (["quantize.ranges: mse"]
                                                                      if ranges == "minmax" else [])
    return (f"the model normalizes by its own statistics (instance norm), which loses most at INT8: set "
            f"{' and '.join(steps)}, or train a variant without it (pynetv2_mobile_nonorm); docs/quantization.md, "
            "'Choosing an INT8 method'")
Range = tuple[float, float]
GivenFn = Callable[[bytes, dict[str, Range]], Mapping[str, Range]]


def calibrate(factory: Any) -> bytes:
    """The float model with every activation's calibrated min/max stored in it (no quantization yet).

    ``factory`` is the ``compress.export.tflite.ConverterFactory`` of the conversion; its int8 converter
    with ``_experimental_calibrate_only`` stops after calibration (what TF's quantization debugger does).
    """
    converter = factory.converter("int8")
    converter._experimental_calibrate_only = True  # noqa: SLF001 - TF's public path to the calibrated model
    return bytes(converter.convert())


def read_ranges(calibrated: bytes) -> dict[str, Range]:
    """``{tensor name: (min, max)}`` of every tensor the calibration gave a range (first subgraph)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    ranges = {}
    for tensor in model.subgraphs[0].tensors:
        q = tensor.quantization
        if q is not None and q.min is not None and q.max is not None and len(q.min) == 1 and len(q.max) == 1:
            ranges[_name(tensor)] = (float(q.min[0]), float(q.max[0]))
    return ranges


def write_ranges(calibrated: bytes, ranges: Mapping[str, Range]) -> bytes:
    """``calibrated`` with the named tensors' min/max replaced (each widened to contain zero).

    Raises ``KeyError`` naming any tensor that is not in the model or has no calibrated range.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    by_name = {_name(t): t for t in model.subgraphs[0].tensors}
    missing = sorted(n for n in ranges if n not in by_name or by_name[n].quantization is None
                     or by_name[n].quantization.min is None)
    if missing:
        raise KeyError(f"no calibrated tensor named {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, (lo, hi) in ranges.items():
        q = by_name[name].quantization
        q.min = np.array([min(float(lo), 0.0)], dtype=np.float32)
        q.max = np.array([max(float(hi), 0.0)], dtype=np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def searchable_tensors(calibrated: bytes) -> list[str]:
    """Tensors whose range a method may set: calibrated outputs of ops without fixed INT8 parameters."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    graph = model.subgraphs[0]
    ranged = read_ranges(calibrated)
    names = []
    for op in graph.operators:
        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) in FIXED_RANGE_OPS:
            continue
        for index in op.outputs:
            name = _name(graph.tensors[index])
            if name in ranged:
                names.append(name)
    return list(dict.fromkeys(names))


def _tensor_values(calibrated: bytes, frames_nhwc: np.ndarray, names: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Per batch of frames, the named tensors' values (float model, builtin kernels, every tensor kept, so no
    op overwrites another's buffer in place)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    inp = interpreter.get_input_details()[0]
    batch = int(inp["shape"][0]) or 1
    for start in range(0, len(frames_nhwc), batch):
        idx = np.arange(start, start + batch) % len(frames_nhwc)
        interpreter.set_tensor(inp["index"], frames_nhwc[idx].astype(inp["dtype"]))
        interpreter.invoke()
        yield {name: np.asarray(interpreter.get_tensor(index[name]), dtype=np.float32).ravel() for name in names}


def exact_minmax(calibrated: bytes, frames_nhwc: np.ndarray, names: list[str]) -> dict[str, Range]:
    """Each named tensor's min and max over ``frames_nhwc`` as the float model computes it (module docstring:
    what TFLite's calibrator logs instead); ``write_ranges`` widens them to contain zero."""
    lo = dict.fromkeys(names, float("inf"))
    hi = dict.fromkeys(names, float("-inf"))
    for values in _tensor_values(calibrated, frames_nhwc, names):
        for name, v in values.items():
            lo[name], hi[name] = min(lo[name], float(v.min())), max(hi[name], float(v.max()))
    return {n: (lo[n], hi[n]) for n in names}


def calibrator_overstated(calibrated: bytes, exact: Mapping[str, Range], tolerance: float = 0.01) -> list[str]:
    """Tensors whose calibrated range is wider than their values by more than ``tolerance`` of the range:
    the ones TFLite's calibrator logged after an in-place op had overwritten them."""
    logged = read_ranges(calibrated)
    wide = []
    for name, (lo, hi) in exact.items():
        if name not in logged:
            continue
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        c_lo, c_hi = min(logged[name][0], 0.0), max(logged[name][1], 0.0)
        if (c_hi - c_lo) - (hi - lo) > tolerance * max(c_hi - c_lo, 1e-12):
            wide.append(name)
    return wide


def activations(calibrated: bytes, frames_nhwc: np.ndarray, names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Values of the named tensors over ``frames_nhwc`` (float model, builtin kernels), subsampled per tensor."""
    gathered: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for values in _tensor_values(calibrated, frames_nhwc, names):
        for name, v in values.items():
            gathered[name].append(v)
    rng = np.random.default_rng(seed)
    out = {}
    for name, parts in gathered.items():
        values = np.concatenate(parts)
        if values.size > SAMPLE_VALUES:
            values = values[rng.choice(values.size, SAMPLE_VALUES, replace=False)]
        out[name] = values
    return out


def quantization_mse(values: np.ndarray, lo: float, hi: float, bits: int = 8) -> float:
    """Mean squared error of asymmetric per-tensor quantization of ``values`` to [lo, hi] (TFLite's scheme)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels if hi > lo else 1.0
    qmin = -(1 << (bits - 1))
    zero = np.round(qmin - lo / scale)
    q = np.clip(np.round(values / scale) + zero, qmin, qmin + levels)
    return float(np.mean(np.square((q - zero) * scale - values)))


def search_range(values: np.ndarray, method: RangeMethod, percentile: float = 99.99, bits: int = 8) -> Range:
    """The range ``method`` picks for one tensor's calibration ``values`` (module docstring)."""
    lo, hi = float(min(values.min(), 0.0)), float(max(values.max(), 0.0))
    if method in ("minmax", "calibrator") or hi <= lo:  # on values, the calibrator's error cannot happen
        return lo, hi
    if method == "percentile":
        p_lo, p_hi = np.percentile(values, [100.0 - percentile, percentile])
        return float(min(p_lo, 0.0)), float(max(p_hi, 0.0))
    if method != "mse":
        raise ValueError(f"unknown range method {method!r}; choose from {RANGE_METHODS}")
    shrink = np.linspace(1.0 / MSE_GRID, 1.0, MSE_GRID)
    best = (quantization_mse(values, lo, hi, bits), lo, hi)
    for _ in range(2):  # coordinate descent: the upper end, then the lower end, twice
        _, cur_lo, cur_hi = best
        for a in shrink * hi:
            best = min(best, (quantization_mse(values, cur_lo, float(a), bits), cur_lo, float(a)))
        _, cur_lo, cur_hi = best
        if lo < 0:
            for b in shrink * lo:
                best = min(best, (quantization_mse(values, float(b), cur_hi, bits), float(b), cur_hi))
    return best[1], best[2]


def searched_ranges(calibrated: bytes, frames_nhwc: np.ndarray, method: RangeMethod,
                    percentile: float = 99.99) -> dict[str, Range]:
    """Every searchable tensor's range by ``method`` on the calibration frames (``minmax``: the values' own
    min/max, not the calibrator's logged ones)."""
    names = searchable_tensors(calibrated)
    if method == "minmax":
        return exact_minmax(calibrated, frames_nhwc, names)
    if method == "calibrator":
        logged = read_ranges(calibrated)
        return {n: logged[n] for n in names}
    values = activations(calibrated, frames_nhwc, names)
    return {n: search_range(values[n], method, percentile) for n in names}


def _name(tensor: Any) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


class RangeSetting:
    """``convert_onnx_to_tflite(extra=...)`` hook: the ``int8`` variant quantized from ranges set by ``method``,
    with every op of the types ``float_ops`` (TFLite names, e.g. instance norm's ``MEAN``,
    ``SQUARED_DIFFERENCE``, ``RSQRT``) kept in float.

    ``prepare(factory, calibrated)`` is the same range setting applied to a calibrated model someone else
    made (the selective-precision search re-quantizes its debugger's model through it).  After the
    conversion ``ranges`` holds what was written, ``changed`` how many tensors moved off the calibrator's ranges
    and ``calibrator_overstated`` which of them the calibrator had logged too wide.
    ``given`` ranges (by tensor name, or a callable ``given(calibrated, {name: the values' min/max})`` that returns
    them, as ``compress.quantization.learned_ranges.LearnedRangeMatcher`` does) override the method's for those
    tensors.
    """

    def __init__(self, method: RangeMethod, percentile: float = 99.99, key: str = "int8",
                 float_ops: Sequence[str] = (), given: Mapping[str, Range] | GivenFn | None = None) -> None:
        if method not in RANGE_METHODS:
            raise ValueError(f"unknown range method {method!r}; choose from {RANGE_METHODS}")
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100]; got {percentile}")
        self.method, self.percentile, self.key, self.float_ops = method, percentile, key, tuple(float_ops)
        self.given: Mapping[str, Range] | GivenFn = given if callable(given) else dict(given or {})
        self.ranges: dict[str, Range] = {}
        self.changed = 0
        self.calibrator_overstated: list[str] = []  # tensors TFLite's calibrator logged too wide (module docstring)

    def prepare(self, factory: Any, calibrated: bytes) -> bytes:
        if factory.frames is None:
            raise ValueError("range setting needs the conversion's calibration frames")
        before = read_ranges(calibrated)
        searched = searched_ranges(calibrated, factory.frames, self.method, self.percentile)
        exact = {n: before[n] for n in searched}  # the stock converter's ranges: nothing to correct
        if self.method != "calibrator" or callable(self.given):
            exact = searched if self.method == "minmax" else exact_minmax(calibrated, factory.frames, list(searched))
        self.calibrator_overstated = [] if self.method == "calibrator" else calibrator_overstated(calibrated, exact)
        # a callable finds its tensors by their values' range: the real one, not the calibrator's overstated log
        given = self.given(calibrated, exact) if callable(self.given) else self.given
        self.ranges = {**searched, **{n: r for n, r in given.items() if n in searched}}
        self.changed = sum(1 for n, r in self.ranges.items() if r != before[n])
        return write_ranges(calibrated, self.ranges)

    def __call__(self, factory: Any, built: dict[str, Any], work: Any) -> dict[str, Any]:
        path = work / f"{self.key}.tflite"
        calibrated = self.prepare(factory, calibrate(factory))
        path.write_bytes(quantize_with_float_layers(factory, calibrated, [], self.float_ops))
        return {self.key: path}

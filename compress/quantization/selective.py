"""Selective precision: keep the INT8 layers that hurt quality most in float, until a PSNR budget holds.

An ISP net is only as good as its worst layer: one activation with a wide range (a tanh input, the
last conv before the pixel shuffle) can cost a dB while every other layer quantizes cleanly.  Rather
than give up INT8 for the whole model, we measure every layer and keep just the worst few in float.

1. TensorFlow's ``QuantizationDebugger`` builds an instrumented INT8 model in which every quantized op
   is checked against the same op in float on the same (dequantized) inputs: the per-layer error of
   that op alone, not the error accumulated from earlier layers.  From it each layer gets an SQNR
   (float output power over quantization-error power, in dB) plus RMSE, RMSE / scale and max error.
   Ops that add no error (SQNR >= ``EXACT_SQNR_DB``: depth to space, reshapes) are never candidates:
   keeping them in float would only add (de)quantize ops.
2. Each candidate alone is kept in float, the model is re-quantized from the same calibration (no new
   calibration run) and the caller's ``drop_db`` measures the PSNR drop against the fp32 TFLite model
   on the runtime the model ships on.  That measured drop, not the debugger's SQNR, ranks the layers:
   the debugger runs TFLite's builtin kernels, whose INT8 arithmetic differs from XNNPACK's (their
   LEAKY_RELU floors negatives), and a layer's local error says little about how it grows through
   the rest of the net.  On LW-ISP (width 0.25, before ``compress.export.tflite_patches.snap_leaky_relu_scales``)
   the SQNR order kept four layers in float and still missed 0.1 dB on XNNPACK; the measured order
   reached it with two.  A candidate whose re-quantized
   model comes out byte-identical or fails to quantize (the quantizer cannot keep that op in float)
   is dropped.
3. Greedy search: each step tries the ``probe`` best-ranked remaining layers on top of the layers
   already chosen, keeps the one with the lowest drop, and stops once the drop is within budget or
   ``max_float_layers`` layers are float.  The step with the lowest drop is the result.

Re-quantizing uses ``mlir_quantize`` on the calibrated model, which is what the debugger's own
``get_nondebug_quantized_model`` calls; calling it directly lets the result keep int8 model I/O.
The search picks layers by the drop on the data ``drop_db`` scores: score a variant's final quality
on other data (``benchmarks/quant_runtimes.py`` searches on training photos and reports held-out ones).
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.export.tflite import ConverterFactory
from compress.export.tflite_inspect import assert_builtin_only

EXACT_SQNR_DB = 80.0
DropFn = Callable[[Path, Path], float]
"""``drop_db(candidate.tflite, fp32.tflite)``: PSNR of the fp32 model minus that of the candidate, in dB."""


@dataclass
class LayerError:
    """One quantized op's own error (from the debugger's NumericVerify output)."""

    name: str  # the op's output tensor name: what the quantizer's ``denylisted_nodes`` takes
    op: str
    sqnr_db: float
    rmse: float
    scale: float
    rmse_over_scale: float  # ~0.29 is plain rounding noise; well above it means clipping or error growth
    max_abs_error: float
    float_drop_db: float | None = None  # the measured drop with only this layer in float (None: not measured)


@dataclass
class SelectiveResult:
    """The chosen float layers, the drop before and after, and every search step."""

    float_layers: list[str]
    drop_db: float
    int8_drop_db: float
    max_drop_db: float
    reached: bool
    layers: list[LayerError]
    steps: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"float_layers": self.float_layers, "drop_db": self.drop_db, "int8_drop_db": self.int8_drop_db,
                "max_drop_db": self.max_drop_db, "reached": self.reached,
                "layers": [_finite(asdict(layer)) for layer in self.layers], "steps": self.steps}


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: an exact layer's SQNR is written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


@contextlib.contextmanager
def _debugger_without_xnnpack() -> Iterator[None]:
    """Make TF's quantization debugger run its models on TFLite's builtin kernels, not XNNPACK.

    The debugger's instrumented model is quantized from the raw calibration ranges, so a unit that
    never fires on the calibration frames keeps a ~1e-8 output scale there (``compress.export.tflite_patches``
    repairs that only in the files it writes); XNNPACK rejects such a conv and the debugger fails
    with "failed to create XNNPACK runtime".  The builtin kernels run any scale and compute the same
    per-layer errors, so the debugger module's interpreter class is swapped for one that skips the
    default delegates while the debugger is built and run.
    """
    from tensorflow.lite.python import interpreter as tf_interpreter
    from tensorflow.lite.tools.optimize.debugging.python import debugger as tf_debugger

    class BuiltinInterpreter(tf_interpreter.Interpreter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("experimental_op_resolver_type",
                              tf_interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            # the debugger reads intermediate tensors after invoke; without a delegate holding them
            # the arena reuses their memory, so keep them all
            kwargs["experimental_preserve_all_tensors"] = True
            super().__init__(*args, **kwargs)

    original = tf_debugger._interpreter  # noqa: SLF001 - the debugger has no delegate option
    tf_debugger._interpreter = types.SimpleNamespace(Interpreter=BuiltinInterpreter)  # noqa: SLF001
    try:
        yield
    finally:
        tf_debugger._interpreter = original  # noqa: SLF001


def layer_errors(factory: ConverterFactory) -> tuple[Any, list[LayerError]]:
    """Run TensorFlow's quantization debugger on the calibration frames.

    Returns the debugger (it holds the calibrated model, so re-quantizing needs no new calibration)
    and one ``LayerError`` per quantized op in model order.
    """
    tf = factory.tf
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"float_power": lambda f, _q, _s, _z: float(np.mean(np.square(f)))})
    with warnings.catch_warnings():  # the debugger runs TF's own (deprecated) interpreter internally
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated", category=UserWarning)
        with _debugger_without_xnnpack():
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=factory.converter("int8"), debug_dataset=factory.representative(), debug_options=options)
            debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)  # the public view: op, tensor name, scale and the metrics
    layers = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        mse, power, scale = float(row["mean_squared_error"]), float(row["float_power"]), float(row["scale"])
        sqnr = math.inf if mse <= 0 else 10.0 * math.log10(max(power, 1e-30) / mse)
        rmse = math.sqrt(max(mse, 0.0))
        layers.append(LayerError(name=row["tensor_name"], op=row["op_name"], sqnr_db=sqnr, rmse=rmse, scale=scale,
                                 rmse_over_scale=rmse / scale if scale > 0 else math.inf,
                                 max_abs_error=float(row["max_abs_error"])))
    return debugger, layers


def quantize_with_float_layers(factory: ConverterFactory, calibrated_model: bytes, float_layers: list[str],
                               float_ops: Sequence[str] = ()) -> bytes:
    """INT8 model from the calibrated model with ``float_layers`` (op output names) and every op of the
    types ``float_ops`` (TFLite op names, e.g. ``RSQRT``) left in float (builtin ops only)."""
    from tensorflow.lite.python import convert

    io_type = factory.tf.int8 if factory.int_io else factory.tf.float32
    flatbuffer = convert.mlir_quantize(calibrated_model, disable_per_channel=False, fully_quantize=False,
                                       input_data_type=io_type, output_data_type=io_type,
                                       denylisted_nodes=list(float_layers) or None,
                                       denylisted_ops=list(float_ops) or None)
    return factory.finish(flatbuffer)


PrepareFn = Callable[[ConverterFactory, bytes], bytes]
"""``prepare(factory, calibrated)``: the calibrated model with its ranges set (``compress.quantization.ranges``)."""


def search(factory: ConverterFactory, fp32_path: Path, drop_db: DropFn, work: Path, max_drop_db: float,
           max_float_layers: int, probe: int = 8, prepare: PrepareFn | None = None,
           float_ops: Sequence[str] = (), max_candidates: int | None = None) -> SelectiveResult:
    """Measured greedy search (module docstring); the best model is written to ``work/int8_selective.tflite``.

    ``prepare`` sets the activation ranges every candidate is quantized from (default: min/max as calibrated);
    ``float_ops`` are op types every candidate keeps in float (``quantize_with_float_layers``);
    ``max_candidates`` limits the layers measured alone to the ones with the lowest SQNR.

    ``reached`` is False when ``max_float_layers`` layers (or every candidate) are float and the drop
    is still over ``max_drop_db``: the caller decides whether that fails.
    """
    if probe < 1:
        raise ValueError(f"probe must be >= 1; got {probe}")
    debugger, layers = layer_errors(factory)
    calibrated = debugger.calibrated_model if prepare is None else prepare(factory, debugger.calibrated_model)
    candidate = work / "int8_selective.tflite"

    def measure(flatbuffer: bytes) -> float:
        candidate.write_bytes(flatbuffer)
        return drop_db(candidate, fp32_path)

    def build(names: list[str]) -> bytes | None:
        """None when the quantizer cannot keep these layers in float (e.g. the op ties scales with a
        neighbour: "quantization parameters violate the same scale constraint")."""
        try:
            return quantize_with_float_layers(factory, calibrated, names, float_ops)
        except RuntimeError:
            if not names:
                raise
            return None

    all_int8 = build([])
    assert all_int8 is not None
    int8_drop = measure(all_int8)
    steps: list[dict[str, Any]] = [{"float_layers": 0, "added": None, "drop_db": int8_drop, "tried": 1}]
    best: tuple[float, list[str], bytes] = (int8_drop, [], all_int8)
    if int8_drop > max_drop_db and max_float_layers > 0:
        ranked = _rank_by_measured_drop(layers, build, measure, all_int8, max_candidates)
        steps[0]["tried"] += len(ranked)
        chosen: list[str] = []
        drop = int8_drop
        while drop > max_drop_db and len(chosen) < max_float_layers and len(chosen) < len(ranked):
            if not chosen:  # one layer alone: already measured while ranking
                name, tried = ranked[0].name, 0
                drop, flatbuffer = float(ranked[0].float_drop_db), build([name])  # type: ignore[arg-type]
            else:
                pool = [layer.name for layer in ranked if layer.name not in chosen][:probe]
                tries = []
                for name in pool:
                    flatbuffer = build([*chosen, name])
                    if flatbuffer is not None:
                        tries.append((measure(flatbuffer), name, flatbuffer))
                tried = len(tries)
                if not tries:
                    break
                drop, name, flatbuffer = min(tries, key=lambda t: t[0])
            assert flatbuffer is not None
            chosen.append(name)
            steps.append({"float_layers": len(chosen), "added": name, "drop_db": drop, "tried": tried})
            if drop < best[0]:
                best = (drop, list(chosen), flatbuffer)
    drop, float_layers, flatbuffer = best
    candidate.write_bytes(flatbuffer)
    assert_builtin_only(candidate)
    return SelectiveResult(float_layers=float_layers, drop_db=drop, int8_drop_db=int8_drop, max_drop_db=max_drop_db,
                           reached=drop <= max_drop_db, layers=layers, steps=steps, path=candidate)


def _rank_by_measured_drop(layers: list[LayerError], build: Callable[[list[str]], bytes | None],
                           measure: Callable[[bytes], float], all_int8: bytes,
                           max_candidates: int | None = None) -> list[LayerError]:
    """Every non-exact layer kept alone in float and measured (``float_drop_db`` is set), lowest drop first;
    with ``max_candidates`` only that many, lowest SQNR first (a big net has hundreds of layers, and
    each measurement is a re-quantization and an evaluation)."""
    candidates = [layer for layer in layers if layer.sqnr_db < EXACT_SQNR_DB]
    if max_candidates is not None:
        candidates = sorted(candidates, key=lambda layer: layer.sqnr_db)[:max_candidates]
    measured = []
    for layer in candidates:
        flatbuffer = build([layer.name])
        if flatbuffer is None or flatbuffer == all_int8:  # the quantizer cannot keep this layer in float
            continue
        layer.float_drop_db = measure(flatbuffer)
        measured.append(layer)
    return sorted(measured, key=lambda layer: layer.float_drop_db)  # type: ignore[arg-type, return-value]


class SelectivePrecision:
    """``convert_onnx_to_tflite(extra=...)`` hook: builds the ``int8`` variant by the greedy search.

    After the conversion ``result`` holds the ``SelectiveResult`` (also when the budget was missed).
    """

    def __init__(self, max_drop_db: float, max_float_layers: int, drop_db: DropFn, key: str = "int8",
                 probe: int = 8, prepare: PrepareFn | None = None, float_ops: Sequence[str] = (),
                 max_candidates: int | None = None) -> None:
        if max_float_layers < 0:
            raise ValueError(f"max_float_layers must be >= 0; got {max_float_layers}")
        if probe < 1:
            raise ValueError(f"probe must be >= 1; got {probe}")
        self.max_drop_db, self.max_float_layers, self.drop_db, self.key = max_drop_db, max_float_layers, drop_db, key
        self.probe, self.prepare, self.float_ops = probe, prepare, tuple(float_ops)
        self.max_candidates = max_candidates
        self.result: SelectiveResult | None = None

    def __call__(self, factory: ConverterFactory, built: dict[str, Path], work: Path) -> dict[str, Path]:
        self.result = search(factory, built["fp32"], self.drop_db, work, self.max_drop_db, self.max_float_layers,
                             self.probe, self.prepare, self.float_ops, self.max_candidates)
        assert self.result.path is not None
        return {self.key: self.result.path}


def selective_markdown(result: SelectiveResult) -> str:
    """The per-layer table and the search steps, for MLflow and people."""
    chosen = set(result.float_layers)
    lines = [
        f"# Selective precision: budget {result.max_drop_db:.3f} dB PSNR drop vs fp32 TFLite",
        "",
        f"All-INT8 drop {result.int8_drop_db:.3f} dB; with {len(result.float_layers)} float layer(s) "
        f"{result.drop_db:.3f} dB ({'within' if result.reached else 'OVER'} budget).",
        "",
        "SQNR etc. are each op's own error on TFLite's builtin kernels (the quantization debugger); "
        "\"drop if float\" is the measured model drop with only that layer in float, which ranks the search.",
        "",
        "| # | op | SQNR dB | RMSE | scale | RMSE/scale | max abs err | drop if float dB | precision | tensor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, layer in enumerate(result.layers):
        alone = "-" if layer.float_drop_db is None else f"{layer.float_drop_db:.3f}"
        lines.append(f"| {i} | {layer.op} | {layer.sqnr_db:.1f} | {layer.rmse:.3g} | {layer.scale:.3g} | "
                     f"{layer.rmse_over_scale:.2f} | {layer.max_abs_error:.3g} | {alone} | "
                     f"{'float' if layer.name in chosen else 'int8'} | `{layer.name}` |")
    lines += ["", "| step | float layers | added | drop dB | models measured |", "|---|---|---|---|---|"]
    for i, step in enumerate(result.steps):
        lines.append(f"| {i} | {step['float_layers']} | {step['added'] or '-'} | {step['drop_db']:.3f} | "
                     f"{step['tried']} |")
    return "\n".join(lines) + "\n"

"""Latency of every exported variant of each student at Full-HD output, on this CPU, in one run.

    .venv/bin/python -m benchmarks.latency [--students smallnet lwisp ...] [--size 540 960]
        [--rounds 3] [--runs 5] [--modes float16 dynamic int8] [--no-publish]

Per student (default configuration unless ``name:key=value,...`` is given, e.g. ``lwisp:width=0.5``):

1. export to ONNX at the packed size ``--size`` (540x960 = 1080x1920 sRGB), rounded up to the
   model's ``input_multiple`` (LW-ISP: 544x960), and convert to TFLite fp32 plus every mode of
   ``compress.export.tflite.QUANT_MODES`` except ``int16x8`` (no XNNPACK kernels: pass ``--modes ... int16x8``
   to time it anyway), and ``int8_fio``: the INT8 model with
   float I/O (QUANTIZE/DEQUANTIZE inside) from the same onnx2tf run, and an onnxruntime QDQ INT8 model
   (U8S8, ``compress.quantization.onnx_quant``).  Calibration: seeded uniform RAW frames; they
   only set quantization ranges, which timing does not depend on;
2. time each (variant, runtime, threads) -- TFLite through ai-edge-litert (XNNPACK by default) at
   1 and 2 threads, onnxruntime CPU, PyTorch eager -- with ``compress.runtime.latency``.  Measurements are
   interleaved: every round times every entry once (median of ``--runs``), and the reported figure
   is the smallest round median, so load from other processes on this shared machine hits all
   variants alike and a disturbed round is discarded rather than averaged in.  An entry whose first
   run exceeds ``--max-ms`` (TFLite INT16x8, which has no XNNPACK kernels) keeps that single run;
3. list the ops XNNPACK leaves to TFLite's own kernels per TFLite file (``compress.runtime.xnnpack``).

Ratios are against fp32 of the same runtime and thread count; ``INT8 / fp32 <= 0.6`` is issue 7's
goal.  The load average before and after is recorded: compare ratios, not absolute times, across
runs.  Writes ``benchmarks/results/latency.json`` and a table in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks.report import cli, measured_on, paragraph, publish, setup, stamp, table
from compress.export.onnx_export import export_onnx
from compress.export.tflite import QUANT_MODES, ConverterFactory, convert_onnx_to_tflite
from compress.export.tflite_inspect import assert_builtin_only
from compress.fold import fold_model
from compress.quantization.onnx_quant import quantize_onnx
from compress.runtime.latency import onnx_latency_ms, tflite_latency_ms, torch_latency_ms
from compress.runtime.profile import count_macs, count_params
from compress.runtime.xnnpack import xnnpack_report
from students import STUDENTS, create_student

FHD_PACKED = (540, 960)  # 1080x1920 sRGB output
DEFAULT_STUDENTS = ("smallnet", "lwisp")
THREADS = (1, 2)
SKIPPED_BY_DEFAULT = ("int16x8",)  # no XNNPACK kernels: seconds to minutes per Full-HD frame
CALIBRATION_FRAMES = 2


@dataclass
class Entry:
    """One timed configuration; ``run(warmup, runs)`` returns ``compress.runtime.latency``'s summary."""

    student: str
    runtime: str  # "tflite", "onnxruntime", "torch"
    variant: str  # "fp32", "int8", ...
    threads: int
    run: Callable[[int, int], dict[str, float]]
    medians: list[float] = field(default_factory=list)
    capped: bool = False

    @property
    def ms(self) -> float:
        return min(self.medians)


def parse_student(spec: str) -> tuple[str, dict[str, Any]]:
    """``"lwisp:width=0.5,fgam=false"`` -> ``("lwisp", {"width": 0.5, "fgam": False})``."""
    name, _, rest = spec.partition(":")
    config: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"student spec {spec!r}: write name:key=value,key=value")
        config[key.strip()] = yaml.safe_load(value)
    return name, config


def packed_size(name: str, size: tuple[int, int]) -> tuple[int, int]:
    """``size`` rounded up to what the student accepts (``input_multiple``, ``min_input``)."""
    info = STUDENTS.info(name)
    return tuple(max(info.min_input, -(-s // info.input_multiple) * info.input_multiple)  # type: ignore[return-value]
                 for s in size)


def _int8_float_io(factory: ConverterFactory, built: dict[str, Path], work: Path) -> dict[str, Path]:
    """The INT8 model again with float input/output (QUANTIZE/DEQUANTIZE ops at the ends)."""
    converter = factory.converter("int8")
    converter.inference_input_type = factory.tf.float32
    converter.inference_output_type = factory.tf.float32
    path = work / "int8_fio.tflite"
    path.write_bytes(factory.finish(converter.convert()))
    return {"int8_fio": path}


def export_variants(name: str, config: dict[str, Any], size: tuple[int, int], modes: list[str],
                    work: Path) -> tuple[torch.nn.Module, dict[str, dict[str, Path]], dict[str, Any]]:
    """The folded model, ``{"tflite": {variant: path}, "onnxruntime": {...}}`` and facts for the row."""
    torch.manual_seed(0)
    model, _ = fold_model(create_student(name, **config).eval())
    model.eval()
    shape = (1, 4, *size)
    onnx_path = export_onnx(model, work / "model.onnx", shape)
    frames = np.random.default_rng(0).random((CALIBRATION_FRAMES, *shape[1:]), dtype=np.float32)
    start = time.perf_counter()
    tflite = convert_onnx_to_tflite(onnx_path, work / "tflite", frames, modes=modes,
                                    extra=_int8_float_io if "int8" in modes else None)
    convert_s = time.perf_counter() - start
    for path in tflite.values():
        assert_builtin_only(path)
    files: dict[str, dict[str, Path]] = {"tflite": dict(tflite), "onnxruntime": {
        "fp32": onnx_path, "int8": quantize_onnx(onnx_path, work / "model_qdq_int8.onnx", frames, "int8")}}
    facts = {"student": name, "config": config, "packed_size": list(size),
             "params": count_params(model), "gmacs": count_macs(model, shape) / 1e9, "convert_s": convert_s}
    return model, files, facts


def _timed(fn: Callable[..., dict[str, float]], *args: Any) -> Callable[[int, int], dict[str, float]]:
    """An ``Entry.run``: ``run(w, r)`` is ``fn(*args, warmup=w, runs=r)``."""
    return lambda w, r: fn(*args, warmup=w, runs=r)


def build_entries(name: str, model: torch.nn.Module, files: dict[str, dict[str, Path]],
                  size: tuple[int, int]) -> list[Entry]:
    entries = []
    for threads in THREADS:
        for variant, path in files["tflite"].items():
            entries.append(Entry(name, "tflite", variant, threads, _timed(tflite_latency_ms, path, threads)))
        for variant, path in files["onnxruntime"].items():
            entries.append(Entry(name, "onnxruntime", variant, threads, _timed(onnx_latency_ms, path, threads)))
        entries.append(Entry(name, "torch", "fp32", threads,
                             _timed(torch_latency_ms, model, (1, 4, *size), threads)))
    return entries


def time_interleaved(entries: list[Entry], rounds: int, runs: int, max_ms: float) -> None:
    """Probe each entry once, then ``rounds`` passes over all entries (order rotated per round)."""
    for entry in entries:
        probe = entry.run(0, 1)["median_ms"]
        if probe > max_ms:
            entry.medians.append(probe)
            entry.capped = True
    live = [e for e in entries if not e.capped]
    for r in range(rounds):
        shift = r % max(1, len(live))
        for entry in live[shift:] + live[:shift]:
            entry.medians.append(entry.run(1, runs)["median_ms"])


def summarize(entries: list[Entry], facts: dict[str, Any], xnnpack: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One student's JSON: per (runtime, variant) the ms per thread count, ratios vs fp32, XNNPACK report."""
    by_key = {(e.runtime, e.variant, e.threads): e for e in entries}
    variants = []
    for runtime, variant in dict.fromkeys((e.runtime, e.variant) for e in entries):
        row: dict[str, Any] = {"runtime": runtime, "variant": variant}
        for t in THREADS:
            entry, base = by_key[(runtime, variant, t)], by_key[(runtime, "fp32", t)]
            row[f"ms_{t}t"] = entry.ms
            row[f"round_medians_{t}t"] = entry.medians
            row[f"single_run_{t}t"] = entry.capped
            row[f"vs_fp32_{t}t"] = entry.ms / base.ms
        if runtime == "tflite":
            row["xnnpack"] = xnnpack[variant]
        variants.append(row)
    return {**facts, "variants": variants}


def measure(specs: list[str], size: tuple[int, int], modes: list[str], rounds: int, runs: int, max_ms: float,
            root: Path) -> list[dict[str, Any]]:
    """Export everything first, then time all students' entries interleaved in one pool."""
    prepared = []
    for spec in specs:
        name, config = parse_student(spec)
        work = root / name
        work.mkdir(parents=True, exist_ok=True)
        student_size = packed_size(name, size)
        model, files, facts = export_variants(name, config, student_size, modes, work)
        xnnpack = {v: xnnpack_report(p) for v, p in files["tflite"].items()}
        prepared.append((build_entries(name, model, files, student_size), facts, xnnpack))
    time_interleaved([e for entries, _, _ in prepared for e in entries], rounds, runs, max_ms)
    return [summarize(entries, facts, xnnpack) for entries, facts, xnnpack in prepared]


def publish_result(result: dict[str, Any]) -> None:
    cells = []
    for s in result["students"]:
        label = f"{s['student']} ({s['packed_size'][0]}x{s['packed_size'][1]}, {s['gmacs']:.1f} GMACs)"
        for v in s["variants"]:
            outside = "-"
            if "xnnpack" in v:
                ops = v["xnnpack"]["undelegated"]
                outside = ", ".join(f"{op} x{ops.count(op)}" for op in dict.fromkeys(ops)) or "none"
            once = " (1 run)" if v["single_run_1t"] or v["single_run_2t"] else ""
            bold = "**" if v["variant"] == "int8" else ""
            cells.append([label, v["runtime"], f"{v['variant']}{once}", f"{v['ms_1t']:.1f}", f"{v['ms_2t']:.1f}",
                          f"{bold}{v['vs_fp32_1t']:.2f}{bold}", f"{bold}{v['vs_fp32_2t']:.2f}{bold}", outside])
    rows = table(["student (packed input)", "runtime", "variant", "ms 1t", "ms 2t", "vs fp32 1t", "vs fp32 2t",
                  "ops outside XNNPACK"], cells)
    intro = paragraph("""
        {measured}, shared with other jobs: 1-minute load average {load_average[before]:.1f} before and
        {load_average[after]:.1f} after the run.  Full-HD output (packed input {size[0]}x{size[1]}, rounded
        up to each model's input multiple), batch 1, default widths, random weights (latency does not depend
        on them).  Each figure is the smallest of {rounds} round medians (each of {runs} runs), all entries
        interleaved round by round; 'vs fp32' divides by fp32 of the same runtime and thread count (issue 7's
        goal: int8 <= 0.6).  TFLite: ai-edge-litert, XNNPACK; int8 has int8 I/O, int8_fio float I/O; dynamic
        = int8 weights, float activations.  onnxruntime int8: static QDQ, U8S8
        (`compress.quantization.onnx_quant`).  Why int8 is or is not faster: docs/quantization.md, 'Latency
        on CPU (XNNPACK)'.""", measured=measured_on(result), **result)
    publish("latency", "Latency: every variant at Full-HD, INT8 vs fp32", intro, rows, result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--students", nargs="*", default=list(DEFAULT_STUDENTS),
                        help="registered names, optionally name:key=value,... for a config")
    parser.add_argument("--size", type=int, nargs=2, default=FHD_PACKED, metavar=("H", "W"),
                        help="packed input size (output is twice it)")
    parser.add_argument("--modes", nargs="*", default=[m for m in QUANT_MODES if m not in SKIPPED_BY_DEFAULT],
                        help=f"TFLite modes besides fp32, from {sorted(QUANT_MODES)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-ms", type=float, default=3000.0,
                        help="an entry whose first run is slower is timed that once")
    parser.add_argument("--no-publish", action="store_true", help="print the JSON only")
    args = parser.parse_args()
    unknown = [m for m in args.modes if m not in QUANT_MODES]
    if unknown:
        parser.error(f"unknown TFLite mode(s) {unknown}; choose from {sorted(QUANT_MODES)}")
    if args.rounds < 1 or args.runs < 1 or min(args.size) < 1:
        parser.error("--rounds, --runs and --size must be positive")
    setup()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.students, tuple(args.size), list(args.modes), args.rounds, args.runs, args.max_ms,
                       Path(tmp))
    result = stamp(size=list(args.size), modes=list(args.modes), rounds=args.rounds, runs=args.runs,
                   load_average={"before": load_before, "after": os.getloadavg()[0]}, students=rows)
    if not args.no_publish:
        publish_result(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

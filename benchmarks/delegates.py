"""Which phone runtimes take each zoo student: GPU-delegate op rules and XNNPACK partitions per variant.

    .venv/bin/python -m benchmarks.delegates [--only smallnet lwisp ...] [--size 64]

Every registered student at its registry ``tiny_config`` (the ops do not depend on the width), folded,
exported to ONNX at ``--size`` packed pixels (rounded up to its input multiple) and converted to fp32,
float16 and int8 TFLite (int8 calibrated on 4 random frames; its ranges do not change which ops the
graph holds), plus int8 from the XNNPACK-rewritten ONNX copy the export stage uses
(``compress.export.graph_rewrites``).  Per variant: TFLite's analyzer verdict, the GPU delegate's op
rules (``compress.export.delegates``), XNNPACK partitions and the ops it leaves out; and whether the
int8 model's flatbuffer can be rewritten to a larger frame (``compress.export.frame_model``).  Writes
``benchmarks/results/delegates.json`` and a table in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import cli, measured_on, paragraph, publish, setup, stamp, table
from compress.export.delegates import gpu_report, xnnpack_section
from compress.export.frame_model import FrameResizeError, matches_resized, resize_tflite
from compress.export.gpu_rewrites import rewrite_expand_for_gpu
from compress.export.graph_rewrites import rewrite_for_xnnpack_int8
from compress.export.onnx_export import export_onnx
from compress.export.tflite import convert_onnx_to_tflite
from compress.fold import fold_model
from compress.runtime.parity import run_tflite
from teachers.registry import STUDENTS

VARIANTS = ("fp32", "float16", "int8")


def _side(size: int, multiple: int, minimum: int) -> int:
    side = max(size, minimum)
    return -(-side // multiple) * multiple


def _report(path: Path) -> dict[str, Any]:
    gpu = gpu_report(path)
    try:
        xnn: dict[str, Any] = xnnpack_section(path)
    except (RuntimeError, ValueError) as exc:
        xnn = {"partitions": None, "undelegated": [], "error": str(exc).splitlines()[0]}
    return {"gpu": gpu, "xnnpack": xnn}


def _frame_resize(tile: Path, dest: Path, packed_hw: tuple[int, int], upscale: int) -> str:
    """Whether the export stage's frame model (the tile flatbuffer's shapes rewritten) works for this model:
    "bit-exact" (vs the interpreter-resized tile), or why it fails (the stage then converts ONNX again)."""
    try:
        frame = resize_tflite(tile, dest, packed_hw, upscale)
    except FrameResizeError as exc:
        return f"fails: {str(exc).split(': ', 1)[-1][:120]}"
    return "bit-exact" if matches_resized(tile, frame) else "differs"


def measure(name: str, size: int, root: Path) -> dict[str, Any]:
    info = STUDENTS.info(name)
    start = time.perf_counter()
    torch.manual_seed(0)
    model, _ = fold_model(STUDENTS.create(name, **info.tiny_config).eval())
    model.eval()
    side = _side(size, max(1, info.input_multiple), info.min_input)
    work = root / name
    work.mkdir(parents=True)
    shape = (1, info.in_channels, side, side)
    row: dict[str, Any] = {"student": name, "config": info.tiny_config, "packed_hw": [side, side], "variants": {}}
    try:
        onnx_path = export_onnx(model, work / "model.onnx", shape)
        frames = np.random.default_rng(0).random((4, *shape[1:])).astype(np.float32)
        files = convert_onnx_to_tflite(onnx_path, work / "tflite", frames, modes=[v for v in VARIANTS if v != "fp32"])
        for variant in VARIANTS:
            row["variants"][variant] = _report(files[variant])
        gpu_copy = work / "gpu" / "model.onnx"
        gpu_copy.parent.mkdir()
        shutil.copyfile(onnx_path, gpu_copy)
        row["gpu_rewrites"] = rewrite_expand_for_gpu(gpu_copy)
        if row["gpu_rewrites"]:  # the float variants as the export stage builds them (export.gpu_rewrite)
            built = convert_onnx_to_tflite(gpu_copy, work / "gpu" / "tflite", frames, modes=["float16", "int8"])
            for variant in VARIANTS:
                report = _report(built[variant])
                report["outputs_identical"] = bool(np.array_equal(run_tflite(built[variant], frames),
                                                                  run_tflite(files[variant], frames)))
                row["variants"][f"{variant}_gpu_rewritten"] = report
        row["frame_resize"] = _frame_resize(files["int8"], work / "frame.tflite", (2 * side, 3 * side),
                                            info.upscale)
        rewritten = work / "model_xnnpack_int8.onnx"
        shutil.copyfile(onnx_path, rewritten)
        row["xnnpack_rewrites"] = rewrite_for_xnnpack_int8(rewritten)
        if row["xnnpack_rewrites"]:
            built = convert_onnx_to_tflite(rewritten, work / "rewritten", frames, modes=["int8"])
            row["variants"]["int8_rewritten"] = _report(built["int8"])
    except Exception as exc:  # a model the converter refuses is a row, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _gpu_cell(r: dict[str, Any]) -> str:
    if r["gpu"]["compatible"]:
        return "yes"
    return "no: " + ", ".join(sorted({f["op"] for f in r["gpu"]["flagged"]})) if r["gpu"]["flagged"] else "no"


def _xnn_cell(r: dict[str, Any]) -> str:
    x = r["xnnpack"]
    if x.get("partitions") is None:
        return f"error: {x.get('error', '?')}"
    left = sorted(set(x["undelegated"]))
    return f"{x['partitions']}" + (f" (out: {', '.join(left)})" if left else "")


def _rewritten_cell(variants: dict[str, Any]) -> str:
    """GPU verdict, XNNPACK partitions and output identity per variant converted from the Expand-rewritten ONNX."""
    cells = [f"{k}: GPU {_gpu_cell(variants[f'{k}_gpu_rewritten'])}, XNNPACK "
             f"{_xnn_cell(variants[f'{k}_gpu_rewritten'])}, "
             f"{'identical' if variants[f'{k}_gpu_rewritten']['outputs_identical'] else 'differs'}"
             for k in VARIANTS if f"{k}_gpu_rewritten" in variants]
    return "; ".join(cells) or "-"


def publish_result(result: dict[str, Any]) -> None:
    header = ["student", "packed", "GPU fp32", "GPU float16", "GPU int8", "GPU after the Expand rewrite",
              "XNNPACK fp32", "XNNPACK int8", "XNNPACK int8 rewritten", "int8 frame by shape rewrite"]
    rows = []
    for r in result["students"]:
        if "error" in r and not r["variants"]:
            rows.append([r["student"], "x".join(map(str, r["packed_hw"])), f"conversion failed: {r['error']}",
                         "", "", "", "", "", "", ""])
            continue
        v = r["variants"]
        rows.append([r["student"], "x".join(map(str, r["packed_hw"])), *(_gpu_cell(v[k]) for k in VARIANTS),
                     _rewritten_cell(v), _xnn_cell(v["fp32"]), _xnn_cell(v["int8"]),
                     _xnn_cell(v["int8_rewritten"]) if "int8_rewritten" in v else "no rewrite needed",
                     r.get("frame_resize", "-")])
    analyzer_agrees = all(v["gpu"].get("analyzer_compatible") for r in result["students"]
                          for v in r["variants"].values())
    intro = paragraph("""
        {measured}.  Every student at its tiny configuration, folded, converted at the packed size shown;
        GPU: the TFLite GPU delegate's op rules (`compress.export.delegates`, after TF's
        `gpu_compatibility.cc`), "no" lists the ops flagged; XNNPACK: partitions on this CPU and the ops
        left to TFLite's builtin kernels; *after the Expand rewrite*: the variants converted from the ONNX copy
        with broadcast `Expand` written as `Add` of zeros (`compress.export.gpu_rewrites`, what the export
        stage does for the float variants), their outputs compared with the unrewritten model's on 4 random
        inputs; *frame by shape rewrite*: the int8 model rewritten to 2x3 times its
        packed size (`compress.export.frame_model`), bit-exact against the resized interpreter, or why not
        (the export stage then converts the ONNX model at the frame size).  TFLite's own analyzer
        (`Analyzer.analyze(gpu_compatibility=True)`, TF {tf}) said "compatible" for {verdict} variant:
        it does not flag ops on this TensorFlow build, so the op rules decide.""",
                      measured=measured_on(result), tf=result["tensorflow"],
                      verdict="every" if analyzer_agrees else "not every")
    publish("delegates", "Delegates: GPU compatibility and XNNPACK partitions of the zoo", intro,
            table(header, rows), result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="student names (default: every registered one)")
    parser.add_argument("--size", type=int, default=64, help="packed input side (rounded up to the model's multiple)")
    args = parser.parse_args()
    setup(2)
    import tensorflow as tf

    names = [n for n in STUDENTS.names() if not args.only or n in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(measure(name, args.size, Path(tmp)))
            print(json.dumps({k: rows[-1][k] for k in ("student", "seconds")}), flush=True)
    result = stamp(size=args.size, tensorflow=tf.__version__, students=rows)
    publish_result(result)


if __name__ == "__main__":
    main()

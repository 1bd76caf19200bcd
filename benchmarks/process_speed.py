"""The whole ``ispdc process`` command on a 12 MP mosaic against the time its interpreter spends on the tiles.

The issue's target: the command (a fresh process: start-up, imports, read, pack, tiles, blend, PNG) within
1.5x of the interpreter's own ``invoke`` time, which ``process`` reports.  The bundle's ``run_model.py``
runs on the same file and must write the same PNG byte for byte.

The input is **synthetic from real data**: the real 2592 x 304 GRBG capture in ``../shared/data/real-raw``
(Halide's sample) repeated to 4000 x 3000 and written as a 16-bit PGM; without ``../shared`` the embedded
photograph unprocessed to a mosaic and repeated.  The bundles: ``runs/quickstart/handoff/*`` when one
exists, and untrained Smallnets exported INT8 at a 256 x 256 packed input, one per ``--widths`` (built
once, cached under ``runs/bench_process_speed``: onnx2tf takes a minute each).  The width sets what the
interpreter costs, so the ratio is shown for a cheap model and for one whose tiles take seconds.

    python -m benchmarks.process_speed --repeats 3 --widths 16 64
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import ROOT, machine, publish
from compress.bundle.card import input_size_section
from compress.bundle.write import golden_tolerance, write_bundle
from compress.export.onnx_export import export_onnx
from compress.export.tflite import convert_onnx_to_tflite
from compress.export.tflite_inspect import tflite_io_details
from compress.runtime.parity import run_tflite
from distill.data.bayer import PACKED_ORDER, unpack_bayer
from distill.data.embedded import load_embedded
from distill.data.rawio import read_mosaic
from students import create_student

REAL_PGM = ROOT.parent / "shared" / "data" / "real-raw" / "bayer_2592_304.pgm"
CACHE = ROOT / "runs" / "bench_process_speed"
SIZE = (3000, 4000)  # mosaic rows, columns: 12 MP
_TIME = re.compile(r"time\s+: ([\d.]+) s \(read ([\d.]+), tiles ([\d.]+) of which interpreter ([\d.]+), "
                   r"write ([\d.]+)\)")


def mosaic_file(folder: Path) -> tuple[Path, str, str]:
    """The 12 MP PGM and what it was made from."""
    path = folder / "mosaic_12mp.pgm"
    if REAL_PGM.is_file():
        tile, source = read_mosaic(REAL_PGM), f"real GRBG capture {REAL_PGM.name} (2592x304) repeated"
    else:
        raw = load_embedded("eval", pattern="GRBG", max_side=None)[0].raw  # packed (4, h, w) in [0, 1]
        tile = (unpack_bayer(raw.transpose(1, 2, 0), "GRBG") * 998 + 25).astype(np.uint16)
        source = "embedded photograph unprocessed to a GRBG mosaic (levels 25..1023) and repeated"
    reps = (-(-SIZE[0] // tile.shape[0]), -(-SIZE[1] // tile.shape[1]))
    mosaic = np.tile(tile, reps)[: SIZE[0], : SIZE[1]]
    path.write_bytes(f"P5 {SIZE[1]} {SIZE[0]} 65535\n".encode() + mosaic.astype(">u2").tobytes())
    return path, source, "GRBG"


def bundle_folders(widths: list[int]) -> list[tuple[Path, str]]:
    """The quickstart bundle if one exists, and a cached untrained INT8 Smallnet bundle per width."""
    found = sorted((ROOT / "runs" / "quickstart" / "handoff").glob("*/model_card.json"))
    bundles = [(found[0].parent, f"quickstart bundle {found[0].parent.name}")] if found else []
    for width in widths:
        bundle = CACHE / f"bundle_w{width}"
        if not (bundle / "model_card.json").is_file():
            build_bundle(bundle, width)
        bundles.append((bundle, f"untrained Smallnet width {width}, INT8, 256x256 packed input"))
    return bundles


def build_bundle(dest: Path, width: int) -> None:
    torch.manual_seed(0)
    model = create_student("smallnet", width=width).eval()
    work = CACHE / f"export_w{width}"
    work.mkdir(parents=True, exist_ok=True)
    onnx = export_onnx(model, work / "smallnet.onnx", (1, 4, 256, 256))
    frames = np.random.default_rng(1).random((8, 4, 256, 256)).astype(np.float32)
    tflite = convert_onnx_to_tflite(onnx, work, frames, int8_io=True, modes=("int8",))["int8"]
    io = tflite_io_details(tflite)
    inp, out = io["inputs"][0], io["outputs"][0]
    golden_in = frames[:1]
    golden_out = np.transpose(run_tflite(tflite, golden_in), (0, 2, 3, 1))
    card = {"name": "bench", "description": "untrained Smallnet (benchmark)", "format": "tflite",
            "quantization": "int8",
            "input": {**inp, "layout": "NHWC", "channel_order": list(PACKED_ORDER), "bayer_pattern": "RGGB",
                      "packing": {"B": "1::2, 1::2"}, "normalisation": "(raw - black) / (white - black)",
                      "range": [0.0, 1.0]},
            "output": {**out, "layout": "NHWC", "colour": "sRGB", "range": [0.0, 1.0]},
            "input_size": input_size_section(model, (256, 256)),
            "quality": {"tflite_int8": {"psnr": 0.0, "ssim": 0.0, "parity_psnr_db": 0.0}}, "evaluation": "none",
            "cost": {"size_kb": tflite.stat().st_size / 1024, "params": 0, "macs": 0, "latency_ms": 0.0,
                     "latency_threads": 2},
            "golden": {"input": "golden_input.npy", "output": "golden_output.npy", "tolerance": golden_tolerance(out)},
            "provenance": {"recipe": "benchmarks/process_speed.py"}}
    write_bundle(dest, tflite, card, np.transpose(golden_in, (0, 2, 3, 1)), golden_out)


def run_once(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return wall, done.stdout


def measure(bundle: Path, mosaic: Path, pattern: str, threads: int, repeats: int) -> dict[str, Any]:
    """Medians over ``repeats`` fresh ``ispdc process`` runs, with ``run_model.py`` on the same file."""
    levels = ["--pattern", pattern, "--black", "25", "--white", "1023", "--threads", str(threads)]
    process = [str(ROOT / ".venv" / "bin" / "ispdc"), "process", str(mosaic), "--bundle", str(bundle), *levels]
    runner = [sys.executable, str(bundle / "run_model.py"), "--input", str(mosaic), *levels]
    runs: list[dict[str, float]] = []
    same = True
    out = ""
    for i in range(repeats):
        wall, out = run_once([*process, "-o", str(CACHE / "process.png")])
        found = _TIME.search(out)
        assert found, out
        inner, read, tiles, invoke, write = map(float, found.groups())
        runner_wall, _ = run_once([*runner, "--output", str(CACHE / "runner.png")])
        same &= (CACHE / "process.png").read_bytes() == (CACHE / "runner.png").read_bytes()
        runs.append({"wall_s": wall, "inside_s": inner, "read_s": read, "tiles_s": tiles, "invoke_s": invoke,
                     "blend_and_cut_s": tiles - invoke, "write_s": write, "outside_s": wall - inner,
                     "run_model_wall_s": runner_wall})
        print(f"{bundle.name} run {i}: wall {wall:.2f} s, interpreter {invoke:.2f} s, ratio {wall / invoke:.2f}; "
              f"run_model.py {runner_wall:.2f} s")
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    model_line = re.search(r"model   : (.*)", out)
    return {"median": median, "ratio_wall_to_interpreter": median["wall_s"] / median["invoke_s"],
            "model_line": model_line.group(1) if model_line else None, "run_model_png_identical": same,
            "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    mosaic, source, pattern = mosaic_file(CACHE)
    results = {}
    for bundle, what in bundle_folders(args.widths):
        results[what] = measure(bundle, mosaic, pattern, args.threads, args.repeats)
    result = {"machine": machine(), "input": f"{SIZE[1]}x{SIZE[0]} 16-bit PGM mosaic: {source}",
              "threads": args.threads, "repeats": args.repeats, "target": 1.5, "bundles": results}
    rows = ["| bundle | whole `ispdc process` (wall) | interpreter invoke | ratio (target <= 1.5) | start-up + "
            "imports | read + pack | cut + blend (tiles besides invoke) | PNG write | `run_model.py` wall | same "
            "PNG |", "|---|---|---|---|---|---|---|---|---|---|"]
    for what, r in results.items():
        m = r["median"]
        rows.append(f"| {what} | {m['wall_s']:.2f} s | {m['invoke_s']:.2f} s | **{r['ratio_wall_to_interpreter']:.2f}**"
                    f" | {m['outside_s']:.2f} s | {m['read_s']:.2f} s | {m['blend_and_cut_s']:.2f} s | "
                    f"{m['write_s']:.2f} s | {m['run_model_wall_s']:.2f} s | "
                    f"{'yes' if r['run_model_png_identical'] else 'NO'} |")
    intro = (f"`python -m benchmarks.process_speed --repeats {args.repeats} --widths "
             f"{' '.join(map(str, args.widths))}` on {machine()}: {result['input']}; {args.threads} threads; "
             f"medians of fresh processes. Wall time of the whole command against the interpreter's own `invoke` "
             f"time (`process` reports it), and `run_model.py` on the same file (its PNG compared byte for byte).")
    publish("process_speed", "ispdc process on 12 MP: command vs interpreter", intro, rows, result)
    for what, r in results.items():
        print(f"{what}: ratio {r['ratio_wall_to_interpreter']:.2f} (target 1.5); same PNG: "
              f"{r['run_model_png_identical']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

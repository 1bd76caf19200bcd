#!/usr/bin/env python3
"""Reference runner for an ispdc hand-off bundle. Needs only numpy and ai-edge-litert.

    pip install numpy ai-edge-litert
    python run_model.py                          # runs golden_input.npy, compares with golden_output.npy
    python run_model.py --input raw.npy --output rgb.ppm

``--input`` is packed RAW as described in model_card.json: float32 NHWC (1, H, W, 4) in [0, 1], channel
order and normalisation as the card says.  The output is float32 sRGB in [0, 1] (.npy) or an 8-bit
PPM image (.ppm).  Quantized inputs/outputs are (de)quantized with the scales stored in the model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

HERE = Path(__file__).resolve().parent


def run(model_path: Path, packed_nhwc: np.ndarray, num_threads: int = 2) -> np.ndarray:
    """One inference: float packed RAW in, float sRGB NHWC out."""
    interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    if tuple(packed_nhwc.shape) != tuple(inp["shape"]):
        raise SystemExit(f"input shape {packed_nhwc.shape} != model input {tuple(inp['shape'])}")
    x = packed_nhwc.astype(np.float32)
    if inp["dtype"] in (np.int8, np.uint8, np.int16):
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"])
    if out["dtype"] in (np.int8, np.uint8, np.int16):
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def write_ppm(rgb_hwc: np.ndarray, path: Path) -> None:
    """8-bit binary PPM: viewable everywhere, written with numpy alone."""
    pixels = (np.clip(rgb_hwc, 0, 1) * 255 + 0.5).astype(np.uint8)
    h, w, _ = pixels.shape
    path.write_bytes(f"P6 {w} {h} 255\n".encode() + pixels.tobytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=HERE / "model.tflite")
    parser.add_argument("--input", type=Path, help="packed RAW .npy (1, H, W, 4) float32 in [0, 1]")
    parser.add_argument("--output", type=Path, help="where to write the sRGB result (.npy or .ppm)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    if args.input is None:
        card = json.loads((HERE / "model_card.json").read_text())
        golden_in = np.load(HERE / "golden_input.npy")
        golden_out = np.load(HERE / "golden_output.npy")
        result = run(args.model, golden_in, args.threads)
        diff = np.abs(result - golden_out)
        tolerance = card["golden"]["tolerance"]
        print(f"golden check: max |diff| = {diff.max():.6f}, mean = {diff.mean():.6f} (tolerance {tolerance})")
        if diff.max() > tolerance:
            print("FAIL: this runtime does not reproduce the golden output", file=sys.stderr)
            return 1
        print("OK")
        return 0

    result = run(args.model, np.load(args.input), args.threads)
    if args.output is None or args.output.suffix == ".npy":
        np.save(args.output or Path("output.npy"), result)
    else:
        write_ppm(result[0], args.output)
    print(f"wrote {args.output or 'output.npy'} {result.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

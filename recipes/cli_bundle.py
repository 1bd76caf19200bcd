"""``ispdc process`` and ``ispdc verify``: the bundle commands (``compress.bundle`` does the work).

Parsers only at import; the bundle modules are imported when the command runs, so ``ispdc --help``
never pays for them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from recipes.cli_common import EXIT_BAD_INPUT, fail


def add_commands(sub: Any) -> None:
    """``process`` and ``verify`` parsers."""
    process = sub.add_parser("process", help="run a hand-off bundle on a RAW file -> 8-bit sRGB PNG")
    process.add_argument("input", type=Path, help="DNG / camera RAW (via LibRaw), a 16-bit PNG/TIFF/PGM or .npy "
                         "Bayer mosaic, or packed RAW .npy/.npz (H x W x 4 or 4 x H x W)")
    process.add_argument("--bundle", type=Path, required=True, help="hand-off bundle folder (model.tflite + card)")
    process.add_argument("-o", "--output", type=Path, required=True, help="output .png (or .ppm, .npy float)")
    process.add_argument("--pattern", default=None, help="CFA order, e.g. GRBG (required for mosaics but camera RAW)")
    process.add_argument("--black", type=float, default=None, help="black level (required for integer data "
                         "without metadata)")
    process.add_argument("--white", type=float, default=None, help="white level (as --black)")
    process.add_argument("--channel-order", default=None, help="channels of packed RAW, e.g. B,Gb,R,Gr (default: "
                         "the .npz's channel_order, else B,Gb,R,Gr as PyNET/MAI store it)")
    process.add_argument("--model", default="auto", choices=("auto", "tile", "frame"), help="tile with "
                         "model.tflite or the bundle's frame model (auto: the frame model when the image is "
                         "at least its size)")
    process.add_argument("--allow-modified-model", action="store_true", help="run a model whose SHA-256 is not "
                         "the card's (with a warning) instead of refusing it")
    process.add_argument("--threads", type=int, default=2, help="TFLite threads (default 2)")
    process.add_argument("--overlap", type=int, default=None, help="tile context in packed pixels (default: the card's "
                         "input_size.overlap, else the receptive-field margin measured on model.tflite)")

    verify = sub.add_parser("verify", help="check a hand-off bundle: files, hashes, every card field the model "
                            "and golden vectors can confirm")
    verify.add_argument("bundle", type=Path, help="hand-off bundle folder")
    verify.add_argument("--threads", type=int, default=2)


def run_command(args: argparse.Namespace) -> int:
    from compress.bundle.verify import verify_bundle

    try:
        if args.command == "process":
            from compress.bundle.process import process_file

            result = process_file(args.input, args.bundle, args.output, pattern=args.pattern, black=args.black,
                                  white=args.white, threads=args.threads, overlap=args.overlap,
                                  channel_order=args.channel_order, model=args.model,
                                  allow_modified=args.allow_modified_model)
            print(result.report())
            return 0
        checked = verify_bundle(args.bundle, num_threads=args.threads)
    except (ValueError, OSError) as exc:  # DataError, RawFileError, BundleError: one line naming the file
        return fail(str(exc), EXIT_BAD_INPUT)
    for line in checked.passed:  # exit 0 and OK when every check passes, else 1, one FAILED: line each
        print(f"  ok: {line}")
    for line in checked.failures:
        print(f"FAILED: {line}", file=sys.stderr)
    print("OK" if checked.ok else f"{args.bundle}: {len(checked.failures)} check(s) failed")
    return 0 if checked.ok else 1

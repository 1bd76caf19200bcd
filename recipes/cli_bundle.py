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
    process = sub.add_parser("process", help="run a hand-off bundle on a camera RAW file -> 8-bit sRGB PNG")
    process.add_argument("input", type=Path, help="DNG / camera RAW (via LibRaw), or a 16-bit PNG/PGM Bayer mosaic")
    process.add_argument("--bundle", type=Path, required=True, help="hand-off bundle folder (model.tflite + card)")
    process.add_argument("-o", "--output", type=Path, required=True, help="output .png")
    process.add_argument("--pattern", default=None, help="CFA order, e.g. GRBG (required for PNG/PGM)")
    process.add_argument("--black", type=float, default=None, help="black level (required for PNG/PGM)")
    process.add_argument("--white", type=float, default=None, help="white level (required for PNG/PGM)")
    process.add_argument("--threads", type=int, default=2, help="TFLite threads (default 2)")
    process.add_argument("--overlap", type=int, default=None, help="tile context in packed pixels (default: the card's "
                         "input_size.overlap, else the receptive-field margin measured on model.tflite)")

    verify = sub.add_parser("verify", help="check a hand-off bundle: files, model hash, golden vectors")
    verify.add_argument("bundle", type=Path, help="hand-off bundle folder")
    verify.add_argument("--threads", type=int, default=2)


def run_command(args: argparse.Namespace) -> int:
    from compress.bundle.process import process_file
    from compress.bundle.verify import BundleError, verify_bundle
    from distill.data.errors import DataError

    try:
        if args.command == "process":
            result = process_file(args.input, args.bundle, args.output, pattern=args.pattern, black=args.black,
                                  white=args.white, threads=args.threads, overlap=args.overlap)
            print(result.report())
            return 0
        checked = verify_bundle(args.bundle, num_threads=args.threads)
    except (DataError, BundleError, ValueError) as exc:
        return fail(str(exc), EXIT_BAD_INPUT)
    for line in checked.passed:  # exit 0 and OK when every check passes, else 1, one FAILED: line each
        print(f"  ok: {line}")
    for line in checked.failures:
        print(f"FAILED: {line}", file=sys.stderr)
    print("OK" if checked.ok else f"{args.bundle}: {len(checked.failures)} check(s) failed")
    return 0 if checked.ok else 1

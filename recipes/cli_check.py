"""``ispdc check-model``: build a registered model and say, before any training, how it would break a stage.

Parsers only at import; ``compress.model_check`` (torch, torch-pruning, ONNX; TensorFlow once it
converts) is imported when the command runs, so ``ispdc --help`` never pays for it.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from recipes.cli_common import EXIT_BAD_INPUT, EXIT_OK, EXIT_STAGE_FAILED, fail

COMMANDS = ("check-model",)


def add_commands(sub: Any) -> None:
    """The ``check-model`` parser."""
    check = sub.add_parser(
        "check-model", help="build a registered model and check it against every stage (shapes, gradients, "
        "taps, fold, prune, ONNX and TFLite export) before training it")
    check.add_argument("name", help="registered teacher or student name (see `ispdc list`)")
    check.add_argument("--family", choices=("auto", "teacher", "student"), default="auto",
                       help="which registry to look in (default: whichever has the name)")
    check.add_argument("--config", dest="config", action="append", default=[], metavar="KEY=VALUE",
                       help="a factory argument, value parsed as YAML (repeatable), e.g. --config width=0.25")
    check.add_argument("--no-convert", dest="convert", action="store_false",
                       help="skip the onnx2tf fp32 TFLite conversion and its parity (saves 15-50 s)")


def run_command(args: argparse.Namespace) -> int:
    """Print one line per finding and a summary; 0 when every stage can take the model, 1 with the list
    of problems otherwise, 2 for bad input (an unknown name, a malformed ``--config``)."""
    from compress.model_check import check_model, parse_config, resolve_family

    try:
        config = parse_config(args.config)
        family = resolve_family(args.name, args.family)
    except (KeyError, ValueError, RuntimeError) as exc:  # bad --config; unknown name; a plugin that fails to load
        return fail(str(exc.args[0]) if exc.args else str(exc), EXIT_BAD_INPUT)
    _quiet_runtimes()
    shown = ", ".join(f"{k}={v!r}" for k, v in config.items())
    print(f"checking {family} {args.name!r}" + (f" ({shown})" if shown else "")
          + ("" if args.convert else "; TFLite conversion skipped (--no-convert)"), flush=True)
    report = check_model(family, args.name, config, convert=args.convert)
    for finding in report.findings:
        label = "ok  " if finding.ok else ("FAIL" if finding.blocking else "note")
        print(f"{label} {finding.stage}: {finding.message}")
    print()
    if report.ok:
        notes = f", {len(report.notes)} note(s)" if report.notes else ""
        print(f"{family} {args.name!r}: every stage can take it ({len(report.findings)} checks{notes}, "
              f"{report.seconds:.1f} s)")
        return EXIT_OK
    problems = report.problems
    print(f"{family} {args.name!r}: {len(problems)} problem(s), fix before training:", file=sys.stderr)
    for finding in problems:
        print(f"  - {finding.stage}: {finding.message}", file=sys.stderr)
    return EXIT_STAGE_FAILED


def _quiet_runtimes() -> None:
    """onnxruntime's warnings about unused initializers and torch-pruning's about unwrapped parameters are
    about the exported graph's tidiness, not about the model: keep them off the report."""
    import warnings

    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    warnings.filterwarnings("ignore", message=r"Unwrapped parameters detected", category=UserWarning)

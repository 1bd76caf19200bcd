"""How long ``ispdc`` takes before it does any work, and which heavy libraries each command loads.

Each command runs ``--repeats`` times as a fresh process (``python -c`` calling ``recipes.cli.main``,
the console script's entry point); the median wall time is reported with the heavy modules found in
``sys.modules`` at exit.  ``--baseline DIR`` runs the same commands, interleaved, against another
checkout of the project (e.g. a ``git worktree`` of an older commit), so the ratio of the two comes
from one run on one machine.

    python -m benchmarks.cli_startup --repeats 7 --baseline /tmp/ispdc_before
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.report import ROOT, machine, publish

COMMANDS = {
    "--help": ["--help"],
    "list": ["list"],
    "validate": ["validate", "quickstart"],
}
HEAVY = ("torch", "tensorflow", "mlflow", "onnx", "onnxruntime", "matplotlib")
_PROBE_TEMPLATE = """
import contextlib, io, json, sys
from recipes.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:  # argparse's --help
        code = exc.code or 0
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""
_PROBE = f"HEAVY = {HEAVY!r}" + _PROBE_TEMPLATE


def run_once(args: list[str], source: Path) -> tuple[float, dict[str, object]]:
    """Wall seconds of one fresh ``ispdc ARGS`` process importing the project from ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env,
                          cwd=source, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"ispdc {' '.join(args)} failed in {source}: {done.stderr[-500:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def measure(repeats: int, baseline: Path | None) -> list[dict[str, Any]]:
    rows = []
    for args in COMMANDS.values():
        times: dict[str, list[float]] = {"this": [], "baseline": []}
        heavy: dict[str, object] = {}
        for _ in range(repeats):  # interleaved, so a busy moment hits both alike
            for label, source in (("this", ROOT), ("baseline", baseline)):
                if source is None:
                    continue
                seconds, probe = run_once(args, source)
                times[label].append(seconds)
                heavy[label] = probe["heavy"]
        row: dict[str, Any] = {"command": f"ispdc {' '.join(args)}",
                               "median_s": statistics.median(times["this"]), "heavy_modules": heavy["this"]}
        if baseline is not None:
            row.update(baseline_median_s=statistics.median(times["baseline"]),
                       baseline_heavy_modules=heavy["baseline"],
                       ratio=statistics.median(times["this"]) / statistics.median(times["baseline"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to compare against")
    args = parser.parse_args()
    rows = measure(args.repeats, args.baseline)
    result = {"machine": machine(), "repeats": args.repeats, "baseline": str(args.baseline) if args.baseline else None,
              "rows": rows}
    table = ["| command | median s | heavy modules loaded | before: median s | before: heavy modules | ratio |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        heavy = ", ".join(row["heavy_modules"]) or "-"
        before = ", ".join(row.get("baseline_heavy_modules", [])) or "-"
        table.append(f"| `{row['command']}` | {row['median_s']:.2f} | {heavy} | "
                     f"{row.get('baseline_median_s', float('nan')):.2f} | {before} | "
                     f"{row.get('ratio', float('nan')):.3f} |")
    intro = (f"`python -m benchmarks.cli_startup --baseline DIR` on {machine()}: median of {args.repeats} fresh "
             "processes per command, interleaved with the same command from the baseline checkout "
             f"(`{args.baseline}`); 'heavy modules' are those in `sys.modules` when the command returns.")
    publish("cli_startup", "CLI start-up", intro, table, result)


if __name__ == "__main__":
    main()

"""Wall time and peak memory of the quickstart recipe, per stage.

    .venv/bin/python -m benchmarks.quickstart [--set key=value ...]

Runs the recipe in this process (no stage cache) while a sampler thread reads the resident memory every
50 ms; a stage's peak is the highest sample between its start and end.  Writes
``benchmarks/results/quickstart.json`` and the table between the markers in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.report import cli, measured_on, publish, setup, stamp, table
from recipes.loader import load_recipe
from recipes.runner import run_recipe


class PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.stop_flag = threading.Event()

    def take_peak(self) -> int:
        """Peak since the last call, then start a new window."""
        peak, self.peak = self.peak, self.process.memory_info().rss
        return max(peak, self.peak)

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)


def publish_result(result: dict) -> None:
    rows = table(["stage", "wall s", "peak RSS MB", "PSNR dB"],
                 ([s["stage"], f"{s['seconds']:.1f}", f"{s['peak_rss_mb']:.0f}",
                   f"{s['psnr']:.2f}" if s.get("psnr") is not None else "-"] for s in result["stages"]))
    rows.append(f"| **total** | **{result['total_seconds']:.1f}** | {result['peak_rss_mb']:.0f} | |")
    intro = (f"{measured_on(result)}, recipe "
             f"`{result['recipe']}` with overrides {result['overrides'] or 'none'}.")
    publish("quickstart", "Quickstart recipe: time and memory per stage", intro, rows, result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--recipe", default="quickstart")
    args = parser.parse_args()
    setup()
    recipe, path = load_recipe(args.recipe, args.overrides)
    sampler = PeakSampler()
    sampler.start()
    stages = []
    sampler.take_peak()
    start = time.perf_counter()

    def on_stage(outcome) -> None:
        stages.append({"stage": outcome.name, "seconds": outcome.seconds, "psnr": outcome.metrics.get("psnr"),
                       "peak_rss_mb": sampler.take_peak() / 2**20})

    with tempfile.TemporaryDirectory() as workdir:
        run_recipe(recipe, path, Path(workdir), use_cache=False, on_stage=on_stage)
    total = time.perf_counter() - start
    sampler.stop_flag.set()
    result = stamp(recipe=recipe.name, overrides=args.overrides, cpus=os.cpu_count(), total_seconds=total,
                   peak_rss_mb=max(s["peak_rss_mb"] for s in stages), stages=stages)
    publish_result(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

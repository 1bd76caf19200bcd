"""Helpers of the tests that start ``ispdc`` processes: a tiny sweep they share, and ``kill -9`` at a chosen
moment (the resume tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_SWEEP = """\
name: fanout
run_until: student
data: {patch_size: 16, patches_per_image: 2, max_side: 96, max_eval_images: 1}
student: {model: smallnet, config: {width: 4, batch_norm: false},
          train: {steps: 4, batch_size: 2, checkpoint_every: 2, log_every: 1}}
export: {input_size: [16, 16]}
sweep: {student.config.width: [4, 6, 8]}
"""
"""Three points of a few seconds each (experiment ``fanout``)."""


def kill_at_first_checkpoint(args: list[str], workdir: Path, stage: str = "student", timeout_s: float = 300) -> None:
    """Run ``python -m recipes.cli *args`` and SIGKILL it as soon as ``stage`` wrote its first checkpoint in
    ``workdir``; fails if the command ends (or takes ``timeout_s``) before that."""
    proc = subprocess.Popen([sys.executable, "-m", "recipes.cli", *args], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    try:
        while not list((workdir / "stages").glob(f"{stage}-*/checkpoint.pt")):
            assert proc.poll() is None, f"the run ended before its first {stage} checkpoint"
            assert time.monotonic() < deadline, f"no {stage} checkpoint within {timeout_s:.0f} s"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

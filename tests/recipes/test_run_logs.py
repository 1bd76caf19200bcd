"""`ispdc run` into a file (a Slurm log, `> run.log`): progress as whole lines, no carriage-return redraws."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.progress import PROGRESS_SECONDS_ENV

ROOT = Path(__file__).resolve().parents[2]
TINY = ["run_until=student", "teacher.config.width=8", "teacher.train.steps=40", "teacher.train.batch_size=2",
        "student.config.width=4", "student.train.steps=40", "student.train.batch_size=2", "data.patch_size=16",
        "data.patches_per_image=2", "data.max_side=96", "data.max_eval_images=1", "export.input_size=[16,16]"]

pytestmark = pytest.mark.slow


def test_training_logged_to_a_file_reads_as_lines(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    args = [sys.executable, "-m", "recipes.cli", "run", "quickstart", "--workdir", str(tmp_path / "work"),
            *[a for s in TINY for a in ("--set", s)]]
    with log.open("w") as out:
        code = subprocess.run(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1", PROGRESS_SECONDS_ENV: "3600"}).returncode
    text = log.read_text()
    assert code == 0, text
    assert "\r" not in text
    lines = text.splitlines()
    bars = [line for line in lines if "|" in line and "it/s" in line]
    # 40 steps with a loss shown on each: a start and an end line per stage (by default a stage adds one
    # line per 30 s; an hour here, so the count does not depend on the machine's speed), not a redraw per step
    assert {b.split(":")[0] for b in bars} == {"teacher", "student"}
    assert len(bars) == 4, bars
    assert len(lines) < 40, text

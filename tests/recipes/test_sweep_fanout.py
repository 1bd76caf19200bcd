"""Sweeps that fan out: processes started at once on one sweep and one new workdir run every point exactly
once under one MLflow parent run (no store-creation traceback), and a point killed with SIGKILL resumes
into the same runs when its command runs again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from recipes.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from process_helpers import TINY_SWEEP, kill_at_first_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "fanout.yaml"
    path.write_text(TINY_SWEEP)
    return path


def _runs(workdir: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["fanout"], output_format="list")


def _args(recipe: Path, workdir: Path, *extra: str) -> list[str]:
    return ["run", str(recipe), "--workdir", str(workdir), *extra]


def test_three_processes_run_every_point_once_in_one_parent(tmp_path: Path) -> None:
    recipe, workdir = _recipe(tmp_path), tmp_path / "work"  # a new workdir: all three create the store at once
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [tmp_path / f"proc{i}.log" for i in range(3)]
    command = [sys.executable, "-m", "recipes.cli", *_args(recipe, workdir)]
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
             for log in logs]
    codes = [proc.wait(timeout=900) for proc in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], "\n=====\n".join(texts)
    assert not any("Traceback" in text for text in texts), "\n=====\n".join(texts)

    runs = _runs(workdir)
    sweeps = [r for r in runs if r.data.tags.get("run_kind") == "sweep"]
    assert len(sweeps) == 1
    sweep = sweeps[0]
    assert sweep.info.status == "FINISHED"  # closed by whichever process finished the last point
    points = [r for r in runs if r.data.tags.get("run_kind") == "point"]
    assert sorted(int(r.data.tags["sweep_point"]) for r in points) == [0, 1, 2]  # each exactly once
    assert {r.data.tags["mlflow.parentRunId"] for r in points} == {sweep.info.run_id}
    assert all(r.info.status == "FINISHED" and "psnr" in r.data.metrics for r in points)
    stages = [r for r in runs if "stage" in r.data.tags]
    assert sorted(r.data.tags["mlflow.parentRunId"] for r in stages) == sorted(r.info.run_id for r in points)
    assert all(r.data.tags["cached"] == "false" for r in stages)  # every student trained once, by one process
    started = [line for text in texts for line in text.splitlines() if line.startswith("point ")]
    assert sorted(started) == ["point 0: student.config.width=4", "point 1: student.config.width=6",
                               "point 2: student.config.width=8"]
    logged = {a.path for a in MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").list_artifacts(
        sweep.info.run_id, "compare")}
    assert "compare/trade_off.txt" in logged


def test_a_killed_point_resumes_and_the_rest_complete_the_sweep(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    recipe, workdir = _recipe(tmp_path), tmp_path / "work"
    steps = ["--set", "student.train.steps=60"]
    kill_at_first_checkpoint(_args(recipe, workdir, "--point", "1", *steps), workdir)
    state_file = next((workdir / "sweeps").glob("fanout-*/p01.json"))
    state = json.loads(state_file.read_text())
    assert state["stages"]["student"]["status"] == "running", "the kill did not land inside the student stage"
    assert not list(state_file.parent.glob("p01.done.json"))

    capsys.readouterr()
    assert main(_args(recipe, workdir, "--point", "1", *steps)) == 0
    out = capsys.readouterr().out
    assert "point 1: student.config.width=6" in out and "1 of 3 points finished" in out
    runs = {r.info.run_id: r for r in _runs(workdir)}
    point = runs[state["parent_run_id"]]  # the same point run as before the kill, now finished
    assert point.info.status == "FINISHED" and point.data.tags["sweep_point"] == "1"
    student = runs[state["stages"]["student"]["run_id"]]  # the same stage run, resumed from its checkpoint
    assert student.info.status == "FINISHED" and student.data.tags["mlflow.parentRunId"] == point.info.run_id
    assert sorted(m.step for m in MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_metric_history(
        student.info.run_id, "train_loss")) == list(range(60))  # every step once: resumed, not restarted
    sweep = runs[point.data.tags["mlflow.parentRunId"]]
    assert sweep.info.status == "RUNNING"  # points 0 and 2 have not run yet

    assert main(_args(recipe, workdir, "--points", "0..2", *steps)) == 0
    out = capsys.readouterr().out
    assert "p01 width=6: finished earlier" in out and "all 3 points finished" in out
    runs = {r.info.run_id: r for r in _runs(workdir)}
    assert [r for r in runs.values() if r.data.tags.get("run_kind") == "sweep"] == [runs[sweep.info.run_id]]
    assert runs[sweep.info.run_id].info.status == "FINISHED"
    points = sorted(int(r.data.tags["sweep_point"]) for r in runs.values() if r.data.tags.get("run_kind") == "point")
    assert points == [0, 1, 2]

"""Runs that share a workdir or a store: MLflow's SQLite schema is created once under a lock, two runs
started at once on one new workdir both finish and make each stage once, a run that must wait for a stage
says so in one line, and ispdc's experiments open on the runs table in the MLflow UI."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from recipes.loader import load_recipe
from recipes.locks import LOCK_DIR, hold
from recipes.runner import stage_key, stage_plan
from recipes.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, ensure_experiment

ROOT = Path(__file__).resolve().parents[2]
TINY = ["run_until=student", "teacher.config.width=8", "teacher.train.steps=2", "teacher.train.batch_size=2",
        "student.config.width=4", "student.train.steps=2", "student.train.batch_size=2", "data.patch_size=16",
        "data.patches_per_image=2", "data.max_side=96", "data.max_eval_images=1", "export.input_size=[16,16]"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "recipes.cli", "run", "quickstart", "--workdir", str(workdir),
            *[a for s in TINY for a in ("--set", s)]]


def test_experiments_are_tagged_as_model_training(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    made = ensure_experiment(uri, "fresh")
    assert client.get_experiment(made).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"
    old = client.create_experiment("made_by_an_older_ispdc")  # no tag: the UI would guess GenAI
    guessed = client.create_experiment("guessed", tags={EXPERIMENT_KIND_TAG: "genai_development_inferred"})
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("made_by_an_older_ispdc", "guessed", "chosen"):
        ensure_experiment(uri, name)
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert client.get_experiment(guessed).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # chosen by hand: kept


def test_processes_opening_one_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Without the lock, two of three such starts died in MLflow's schema migration here (``table ...
    already exists`` / alembic ``expected to match one row``)."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    code = f"from recipes.tracking import ensure_experiment; ensure_experiment({uri!r}, 'race'); print('ok')"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], "\n=====\n".join(outputs)
    assert [len(MlflowClient(uri).search_experiments(filter_string="name = 'race'"))] == [1]


@pytest.mark.slow
def test_two_runs_started_at_once_on_a_new_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    procs = [subprocess.Popen(_run_command(workdir), cwd=ROOT, env=ENV, stdout=log.open("w"),
                              stderr=subprocess.STDOUT) for log in logs]
    codes = [proc.wait(timeout=600) for proc in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0] and not any("Traceback" in t for t in texts), "\n=====\n".join(texts)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["quickstart"], output_format="list")
    made = sorted(r.data.tags["stage"] for r in runs if r.data.tags.get("cached") == "false")
    assert made == ["student", "teacher"]  # each stage made once; the other run took it from the cache
    assert len([r for r in runs if r.data.tags.get("run_kind") == "recipe"]) == 2


@pytest.mark.slow
def test_a_run_waits_for_a_stage_another_process_holds_and_says_so(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    recipe, _ = load_recipe("quickstart", TINY)
    name, config = stage_plan(recipe)[0]
    lock = workdir / LOCK_DIR / f"stage-{name}-{stage_key(name, config, recipe, '')}.lock"
    with hold(lock, "the test's hold"):
        proc = subprocess.Popen(_run_command(workdir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 300
        while not any(line.startswith("waiting for") for line in seen):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(seen)
            seen.append(line)
        assert proc.poll() is None  # still waiting while the lock is held
    rest = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, "".join(seen) + rest
    waits = [line for line in seen + rest.splitlines() if line.startswith("waiting for")]
    assert len(waits) == 1 and f"stage {name}-" in waits[0] and f"pid {os.getpid()}" in waits[0], waits
    assert f"  {name}" in rest and "(cached)" not in rest  # it then made the stage itself

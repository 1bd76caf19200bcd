"""Kill -9 a recipe run mid-student-stage, run it again: it resumes into the same MLflow runs, logs
every training step exactly once, and ends with the metrics of an uninterrupted run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest

from distill.checkpointing import load_checkpoint
from recipes.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from process_helpers import kill_at_first_checkpoint  # noqa: E402

STUDENT_STEPS = 24
TINY = [
    "run_until=student", "teacher.config.width=8", "teacher.train.steps=2", "teacher.train.batch_size=2",
    "student.config.width=4", "student.config.batch_norm=false", f"student.train.steps={STUDENT_STEPS}",
    "student.train.batch_size=2", "student.train.checkpoint_every=2", "student.train.log_every=1",
    "data.patch_size=16", "data.patches_per_image=2", "data.max_side=128", "export.input_size=[32,32]",
]


def _args(workdir: Path, *extra: str) -> list[str]:
    return ["run", "quickstart", "--workdir", str(workdir), *extra, *[a for s in TINY for a in ("--set", s)]]


def _student_folder(workdir: Path) -> Path:
    return next((workdir / "stages").glob("student-*"))


def _runs(workdir: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["quickstart"], output_format="list")


def _train_histories(workdir: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("train_")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    assert main(_args(workdir)) == 0
    return workdir


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("killed")
    kill_at_first_checkpoint(_args(workdir), workdir, timeout_s=240)
    student = _student_folder(workdir)
    killed_at = load_checkpoint(student / "checkpoint.pt")["step"]
    state = json.loads((workdir / "run_state.json").read_text())
    logged_before = _train_histories(workdir, state["stages"]["student"]["run_id"])
    code = main(_args(workdir))
    return {"workdir": workdir, "code": code, "killed_at": killed_at, "state": state, "logged_before": logged_before}


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(reference: Path, resumed: dict) -> None:
    workdir = resumed["workdir"]
    assert resumed["code"] == 0
    assert 0 < resumed["killed_at"] < STUDENT_STEPS, "the kill did not land inside the student stage"
    assert resumed["state"]["stages"]["teacher"]["status"] == "done"
    assert resumed["state"]["stages"]["student"]["status"] == "running"
    assert not (workdir / "run_state.json").exists(), "a finished run leaves no state to resume"

    # same MLflow runs: one parent, one run per stage, the ids recorded before the kill
    runs = _runs(workdir)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["stage"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert [p.info.run_id for p in parents] == [resumed["state"]["parent_run_id"]]
    assert len(runs) == 3 and sorted(children) == ["student", "teacher"]
    for stage in ("teacher", "student"):
        assert children[stage].info.run_id == resumed["state"]["stages"][stage]["run_id"]
        assert children[stage].info.status == "FINISHED"

    # every train metric step logged exactly once, none lost, values as in the uninterrupted run
    student_id = children["student"].info.run_id
    histories = _train_histories(workdir, student_id)
    ref_student = next(r for r in _runs(reference) if r.data.tags.get("stage") == "student")
    ref_histories = _train_histories(reference, ref_student.info.run_id)
    assert sorted(histories) == sorted(ref_histories) and "train_loss" in histories
    for key, history in histories.items():
        assert [s for s, _ in history] == list(range(STUDENT_STEPS)), key
        assert [v for _, v in history] == pytest.approx([v for _, v in ref_histories[key]], abs=1e-6), key
    for key, before in resumed["logged_before"].items():  # what the killed run logged stays as it was
        assert set(before) <= set(histories[key]), key

    # the stage results equal the uninterrupted run's
    ours = json.loads((_student_folder(workdir) / "done.json").read_text())["metrics"]
    theirs = json.loads((_student_folder(reference) / "done.json").read_text())["metrics"]
    compared = {k for k in theirs if not k.startswith("teacher_cache")}
    assert {"psnr", "ssim", "final_loss"} <= compared
    for key in compared:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert children["student"].data.metrics["psnr"] == pytest.approx(ref_student.data.metrics["psnr"], abs=1e-6)


@pytest.mark.slow
def test_no_resume_starts_a_fresh_parent_run(resumed: dict) -> None:
    workdir = resumed["workdir"]
    before = {r.info.run_id for r in _runs(workdir)}
    assert main(_args(workdir, "--no-resume", "--set", "student.train.steps=2")) == 0
    after = [r for r in _runs(workdir) if r.info.run_id not in before]
    stages = sorted(r.data.tags.get("stage", "parent") for r in after)
    assert stages == ["parent", "student", "teacher"]  # a new parent; teacher from the cache, student anew

"""``ispdc run --nproc 2``: the CLI relaunches itself under torchrun; rank 0 alone logs to MLflow and
writes the stage folders, the follower's scratch copies are gone afterwards."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "run_until=quantize", "teacher.config.width=8", "teacher.train.steps=2", "teacher.train.batch_size=2",
    "student.config.width=4", "student.train.steps=4", "student.train.batch_size=2", "student.train.log_every=1",
    "prune.finetune.steps=2", "prune.finetune.batch_size=2", "data.patch_size=16", "data.patches_per_image=2",
    "data.max_side=128", "export.input_size=[32,32]", "quantize.calibration_frames=4",
    "quantize.qat={train: {steps: 2, batch_size: 2, log_every: 1}, kd_weight: 0.5}",
]


@pytest.mark.slow
def test_nproc_2_runs_the_recipe_once_logged(tmp_path: Path) -> None:
    args = ["run", "quickstart", "--nproc", "2", "--workdir", str(tmp_path)] + [a for s in TINY for a in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "recipes.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 processes" in proc.stdout and proc.stdout.count("MLflow store") == 1  # rank 0 reports
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["quickstart"], output_format="list")
    assert sorted(r.data.tags.get("stage", "parent") for r in runs) == ["fold", "parent", "prune", "quantize",
                                                                        "student", "teacher"]
    client = mlflow.MlflowClient()
    student = next(r for r in runs if r.data.tags.get("stage") == "student")
    steps = [m.step for m in client.get_metric_history(student.info.run_id, "train_loss")]
    assert steps == [0, 1, 2, 3]  # logged once, by rank 0
    quantize = next(r for r in runs if r.data.tags.get("stage") == "quantize")  # QAT: DDP on both ranks too
    assert [m.step for m in client.get_metric_history(quantize.info.run_id, "qat_train_loss")] == [0, 1]
    assert not list((tmp_path / ".ddp").glob("rank1/*")) and not (tmp_path / "run_state.json").exists()


def test_nproc_below_one_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    from recipes.cli import main

    assert main(["run", "quickstart", "--nproc", "0"]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err

"""The distillation recipes: validation of feature pairs, and tiny runs of both built-in KD recipes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from compress.checkpoint import load_model
from recipes.loader import RecipeError, builtin_recipes, load_recipe
from recipes.runner import run_recipe
from teachers.registry import STUDENTS

TINY_DATA = ["data.max_side=128", "data.patch_size=32", "data.patches_per_image=2", "export.input_size=[32,32]",
             "run_until=student"]


def _write(tmp_path: Path, recipe: str, edit) -> Path:  # noqa: ANN001
    data = yaml.safe_load(builtin_recipes()[recipe].read_text())
    edit(data)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_unknown_tap_path_names_the_key_and_the_closest_module(tmp_path: Path) -> None:
    path = _write(tmp_path, "lwisp_hetero_kd",
                  lambda d: d["student"]["distill"]["features"]["pairs"][0].update(teacher="up9"))
    with pytest.raises(RecipeError, match=r"edited.yaml: student.distill.features.pairs.0.teacher: teacher LWISP "
                                          r"has no submodule 'up9'; did you mean"):
        load_recipe(path)
    cli = subprocess.run([sys.executable, "-m", "recipes.cli", "validate", str(path)], capture_output=True, text=True)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert "student.distill.features.pairs.0.teacher" in cli.stderr


@pytest.mark.parametrize(("edit", "key", "message"), [
    (lambda d: d.pop("teacher"), "student.distill.features", "needs a teacher block"),
    (lambda d: d["student"]["distill"].update(teacher_input="raw"), "student.distill.teacher_input",
     "clean-image teacher takes the target RGB"),
    (lambda d: d["student"]["distill"].update(output_kd=0.5), "student.distill.output_kd", "needs a RAW teacher"),
    (lambda d: d["student"]["distill"]["features"]["pairs"][1].update(loss="l3"),
     "student.distill.features.pairs.1.loss", "unknown loss 'l3'"),
    (lambda d: d["student"]["distill"]["features"].update(pairs=[]), "student.distill.features.pairs",
     "at least one"),
])
def test_distill_mistakes_name_their_key(tmp_path: Path, edit, key: str, message: str) -> None:  # noqa: ANN001
    with pytest.raises(RecipeError, match=rf"edited.yaml: {key}: .*{message}"):
        load_recipe(_write(tmp_path, "lwisp_hetero_kd", edit))


def _student_metrics(tmp_path: Path, recipe: str, *overrides: str) -> tuple[Any, Any]:  # (result, MLflow run data)
    spec, path = load_recipe(recipe, [*TINY_DATA, *overrides])
    _, outcomes = run_recipe(spec, path, tmp_path)
    assert [o.name for o in outcomes] == (["teacher", "student"] if spec.teacher else ["student"])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[spec.name], output_format="list")
    stage = next(r for r in runs if r.data.tags.get("stage") == "student")
    return outcomes[-1].result, stage.data


def test_lwisp_hetero_kd_logs_each_feature_term_and_ships_no_adapter(tmp_path: Path) -> None:
    outputs, run = _student_metrics(
        tmp_path, "lwisp_hetero_kd", "teacher.config.width=0.25", "student.config.width=0.25",
        "teacher.train.steps=2", "teacher.train.batch_size=2", "student.train.steps=3", "student.train.batch_size=2")
    assert {"train_kd_feat_up2__up1", "train_kd_feat_up3__up2", "train_kd_feat_up4__up3", "train_kd_features",
            "train_l1", "train_ms_ssim"} <= set(run.metrics)
    assert run.metrics["kd_adapter_params"] == (8 * 16 + 16) + (4 * 8 + 8)  # two 1x1 convs, up4 needs none
    assert run.params["kd_pairs"] == "up2->up1, up3->up2, up4->up3"
    student, _ = load_model(outputs.model)
    assert not any("adapter" in k or "proj" in k for k in student.state_dict())


def test_smallnet_from_pynet_reuses_cached_teacher_outputs(tmp_path: Path) -> None:
    levels = "[" + ",".join(f"{{level: {k}, train: {{steps: 1, batch_size: 2}}}}" for k in range(5, -1, -1)) + "]"
    _, run = _student_metrics(tmp_path, "smallnet_from_pynet", f"teacher.levels={levels}", "data.crop_sets=1",
                              "teacher.config.width=0.0625", "student.train.steps=8", "student.train.batch_size=2")
    assert {"train_kd_output", "train_kd_feat_act2__conv_l1_d14"} <= set(run.metrics)
    misses, hits = run.metrics["teacher_cache_misses"], run.metrics["teacher_cache_hits"]
    assert misses + hits == 8 * 2 and 0 < misses < 16 and hits > 0  # one fixed crop set: later epochs hit
    assert any((tmp_path / "teacher_cache").rglob("*.pt"))


@pytest.mark.parametrize(("recipe", "edit", "message"), [
    ("quickstart", lambda d: d.pop("teacher"), "unpaired RAW distillation needs a teacher block"),
    ("lwisp_hetero_kd", lambda d: None, "needs a RAW teacher: a clean-image teacher"),
])
def test_unpaired_raw_without_a_raw_teacher_names_its_key(tmp_path: Path, recipe: str, edit, message: str) -> None:  # noqa: ANN001
    def both(d: dict) -> None:
        edit(d)
        d["student"]["distill"]["unpaired_raw"] = 0.5

    with pytest.raises(RecipeError, match=rf"edited.yaml: student.distill.unpaired_raw: {message}"):
        load_recipe(_write(tmp_path, recipe, both))


def test_unpaired_raw_is_labelled_by_the_teacher_and_logged(tmp_path: Path) -> None:
    _, run = _student_metrics(
        tmp_path, "quickstart", "teacher.config.width=8", "teacher.train.steps=2", "teacher.train.batch_size=2",
        "student.train.steps=3", "student.train.batch_size=2", "student.distill.unpaired_raw=0.5",
        "student.distill.unpaired_batch=3")
    assert {"train_kd_unpaired", "train_kd_output", "train_l1"} <= set(run.metrics)
    assert run.metrics["train_kd_unpaired"] > 0


OFA = {"threshold_db": 20.0, "head_width": 4, "blocks": 1}


@pytest.mark.parametrize(("change", "key", "message"), [
    ({"model": "csanet"}, "trunk_tap", "student 'csanet' declares no trunk_tap"),
    ({"trunk_tap": "act9"}, "trunk_tap", "has no submodule 'act9'; did you mean"),
    ({"head_width": 0}, "head_width", "greater than or equal to 1"),
    ({"weight": 0}, "weight", "greater than 0"),
    ({"threshold_db": float("nan")}, "threshold_db", "must be a number of dB"),
    ({"threshold_db": None}, "threshold_db", "Field required"),
    ({"treshold_db": 20.0}, "treshold_db", "unknown key"),
    ({"unpaired_raw": True}, "unpaired_raw", r"set once_for_all.distill > 0"),
    ({"distill": -0.5}, "distill", "greater than or equal to 0"),
])
def test_once_for_all_mistakes_name_their_key(tmp_path: Path, change: dict, key: str, message: str) -> None:
    def edit(d: dict) -> None:
        ofa = {**OFA, **{k: v for k, v in change.items() if k != "model"}}
        d["student"]["distill"]["once_for_all"] = {k: v for k, v in ofa.items() if v is not None}
        d["student"]["model"] = change.get("model", "smallnet")
        d["student"]["config"] = {}

    with pytest.raises(RecipeError, match=rf"edited.yaml: student.distill.once_for_all.{key}: .*{message}"):
        load_recipe(_write(tmp_path, "quickstart", edit))


def test_once_for_all_trains_without_a_teacher_logs_the_detach_and_saves_the_student_alone(tmp_path: Path) -> None:
    def edit(d: dict) -> None:
        d.pop("teacher")
        d["student"]["distill"] = {"once_for_all": {**OFA, "threshold_db": float("-inf")}}

    outputs, run = _student_metrics(tmp_path, str(_write(tmp_path, "quickstart", edit)), "student.train.steps=3",
                                    "student.train.batch_size=2", "student.train.log_every=1")
    assert run.metrics["ofa_detached_step"] == 0  # -inf: detached after the first joint step
    assert run.metrics["train_ofa_super_psnr"] > 0 and run.metrics["ofa_head_params"] > 0
    student, spec = load_model(outputs.model)
    fresh = STUDENTS.create(spec.name, **spec.config)
    assert list(student.state_dict()) == list(fresh.state_dict())  # no head in the saved student


def test_once_for_all_distillation_with_unpaired_raw_runs_without_a_teacher(tmp_path: Path) -> None:
    def edit(d: dict) -> None:
        d.pop("teacher")
        d["student"]["distill"] = {"once_for_all": {**OFA, "threshold_db": float("-inf"), "distill": 0.5,
                                                    "unpaired_raw": True}, "unpaired_batch": 2}

    _, run = _student_metrics(tmp_path, str(_write(tmp_path, "quickstart", edit)), "student.train.steps=3",
                              "student.train.batch_size=2", "student.train.log_every=1")
    assert run.metrics["train_ofa_sub_psnr"] > 0 and run.metrics["ofa_detached_step"] == 0

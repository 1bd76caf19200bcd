"""Users' own models: the example plugin package (examples/acme_isp, installed by `make test`) through
every stage by recipe and by the Python API, its origin in `ispdc list`, and the plugin errors."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from recipes.api import run_recipe_with_models
from recipes.cli import main
from recipes.loader import RecipeError, load_recipe
from recipes.results import ModelResult
from teachers import registry
from teachers.registry import STUDENTS, TEACHERS, ModelInfo, PluginError, registering_as

ROOT = Path(__file__).resolve().parents[2]
ACME_RECIPE = ROOT / "examples" / "acme_isp" / "recipe.yaml"
TINY = [
    "teacher.config.width=4", "teacher.train.steps=4", "teacher.train.batch_size=2",
    "student.config.width=8", "student.train.steps=4", "student.train.batch_size=2",
    "prune.finetune.steps=2", "prune.finetune.batch_size=2",
    "data.patch_size=16", "data.patches_per_image=2", "data.max_side=128",
    "quantize.calibration_frames=4", "export.input_size=[32,32]",
]

pytestmark = pytest.mark.skipif("acme_tiny" not in STUDENTS,
                                reason="the example plugin is not installed (make test installs examples/acme_isp)")


def test_list_names_each_plugin_model_with_its_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "acme_unet (acme-isp)" in out and "acme_tiny (acme-isp)" in out
    assert "smallnet," in out or out.rstrip().endswith("smallnet_mialgo")  # zoo names carry no origin
    assert STUDENTS.origin("acme_tiny") == "acme-isp" and STUDENTS.origin("smallnet") == "zoo"


@pytest.mark.slow
def test_plugin_models_run_from_a_recipe_to_a_verified_bundle(tmp_path: Path) -> None:
    args = ["run", str(ACME_RECIPE), "--workdir", str(tmp_path)] + [a for s in TINY for a in ("--set", s)]
    assert main(args) == 0
    bundle = tmp_path / "handoff" / "acme_tiny_int8"
    assert main(["verify", str(bundle)]) == 0
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["model"]["name"] == "acme_tiny" and card["variant"] == "int8"
    done = {p.name.split("-")[0]: json.loads((p / "done.json").read_text()) for p in (tmp_path / "stages").iterdir()}
    assert done["student"]["metrics"]["kd_adapter_params"] > 0  # the body -> dec feature pair trained an adapter
    assert done["prune"]["metrics"]["macs_reduction"] > 0.1
    assert done["fold"]["metrics"]["fold_max_abs_diff"] < 1e-4  # the twin-branch stem and the BN folded


@pytest.mark.slow
def test_models_defined_in_python_run_through_the_api(tmp_path: Path) -> None:
    teacher = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                            nn.PixelShuffle(2))
    train = {"steps": 3, "batch_size": 2, "losses": {"l1": 1.0}}
    recipe = {
        "name": "api_test",
        "data": {"kind": "embedded", "max_side": 128, "patch_size": 16, "patches_per_image": 2},
        "teacher": {"model": "nb_teacher", "train": train},
        "student": {"model": "nb_student", "config": {"width": 8}, "train": train, "distill": {"output_kd": 0.5}},
        "prune": {"ratio": 0.25, "finetune": {**train, "steps": 2}},
        "quantize": {"calibration_frames": 4},
        "export": {"input_size": [32, 32]},
    }
    run = run_recipe_with_models(recipe, workdir=tmp_path, teachers={"nb_teacher": teacher},
                                 students={"nb_student": (_student, ModelInfo(tiny_config={"width": 4}))})
    assert [o.name for o in run.outcomes] == ["teacher", "student", "prune", "fold", "quantize", "export", "handoff"]
    assert run.bundle is not None and main(["verify", str(run.bundle)]) == 0
    assert run.metrics["export"]["parity_psnr_db_tflite_fp32"] >= 60
    assert STUDENTS.origin("nb_student") == "api"
    # a pruned API model rebuilds from its channel plan like any registered model
    from compress.checkpoint import load_model

    pruned, spec = load_model(run.outcomes[2].typed(ModelResult).model)
    assert spec.widths and pruned(torch.rand(1, 4, 16, 16)).shape == (1, 3, 32, 32)


def _student(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 12, 3, padding=1),
                         nn.PixelShuffle(2))


def test_a_plugin_that_fails_to_import_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    def load() -> None:
        raise ModuleNotFoundError("No module named 'broken_isp.layers'")

    entry = SimpleNamespace(name="broken", value="broken_isp.models", dist=SimpleNamespace(name="broken-isp"),
                            load=load)
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_load_error", None)
    monkeypatch.setattr(registry, "_entry_points", lambda: [entry])
    assert main(["list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ispdc: error: plugin broken-isp: entry point 'broken = broken_isp.models' (group ispdc.models) "
                   "failed to import: ModuleNotFoundError: No module named 'broken_isp.layers'")
    with pytest.raises(PluginError, match="broken-isp"):  # every later lookup fails the same way
        STUDENTS.create("smallnet")


def test_a_name_clash_is_refused_naming_both_origins() -> None:
    with registering_as("other-isp"), pytest.raises(PluginError) as caught:
        STUDENTS.add("smallnet", _student)
    assert str(caught.value) == ("student 'smallnet' from plugin other-isp clashes with the student of that name "
                                 "from the ispdc zoo; rename one of them")
    with registering_as("other-isp"), pytest.raises(PluginError, match="from plugin acme-isp"):
        TEACHERS.add("acme_unet", _student)
    assert STUDENTS.origin("smallnet") == "zoo"


def test_a_plugin_teacher_checkpoint_is_checked_against_the_model(tmp_path: Path) -> None:
    good, wrong = tmp_path / "acme_unet.pt", tmp_path / "other.pt"
    torch.save(TEACHERS.create("acme_unet", width=4).state_dict(), good)
    torch.save(TEACHERS.create("acme_unet", width=8).state_dict(), wrong)
    overrides = TINY + [f"teacher.checkpoint={good}"]
    recipe, _ = load_recipe(ACME_RECIPE, overrides)
    assert recipe.teacher is not None and recipe.teacher.checkpoint == good
    with pytest.raises(RecipeError, match=r"recipe.yaml: teacher.checkpoint: .*other.pt"):
        load_recipe(ACME_RECIPE, TINY + [f"teacher.checkpoint={wrong}"])


def test_validate_reports_a_contract_violation_before_anything_runs(tmp_path: Path) -> None:
    from recipes.api import register_models

    one_x = lambda: nn.Sequential(nn.Conv2d(4, 3, 3, padding=1))  # noqa: E731  (1x output; RAW -> RGB is 2x)
    register_models(STUDENTS, {"one_x_student": one_x})
    try:
        path = tmp_path / "bad.yaml"
        path.write_text("name: bad\nstudent: {model: one_x_student}\n")
        with pytest.raises(RecipeError, match=r"bad.yaml: student: .*student 'one_x_student': .*output"):
            load_recipe(path)
    finally:
        for table in (STUDENTS._factories, STUDENTS._info, STUDENTS._origins):
            table.pop("one_x_student", None)

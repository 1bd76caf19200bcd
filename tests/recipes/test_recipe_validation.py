"""Malformed recipes: one line naming the file and the key path, exit code 2, no traceback."""
from pathlib import Path

import pytest
import yaml

from recipes.cli import main
from recipes.loader import RecipeError, builtin_recipes, load_recipe
from recipes.schema import flatten

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "builtin" / "quickstart.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _cli_error(capsys, *argv: str) -> str:
    code = main(["validate", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    return err


def test_builtin_quickstart_validates(capsys) -> None:
    assert main(["validate", "quickstart"]) == 0
    recipe, path = load_recipe(QUICKSTART)
    assert recipe.teacher is not None and recipe.prune is not None
    assert "student.train.steps" in flatten(recipe)


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_builtin_recipe_validates(name: str, capsys) -> None:
    assert main(["validate", name]) == 0, capsys.readouterr().err


def test_unknown_key_names_file_key_and_suggestion(tmp_path, capsys) -> None:
    path = _write(tmp_path, "name: r\nstudent:\n  trian: {steps: 3}\n")
    err = _cli_error(capsys, str(path))
    assert str(path) in err and "student.trian" in err and "did you mean 'train'" in err


def test_wrong_type_names_the_key(tmp_path, capsys) -> None:
    path = _write(tmp_path, "name: r\nstudent:\n  train: {steps: many}\n")
    err = _cli_error(capsys, str(path))
    assert "student.train.steps" in err and "integer" in err


def test_unknown_model_lists_known_ones(tmp_path, capsys) -> None:
    path = _write(tmp_path, "name: r\nteacher: {model: resnet9000}\n")
    err = _cli_error(capsys, str(path))
    assert "teacher.model" in err and "unknown teacher 'resnet9000'" in err and "punet" in err


def test_missing_data_folder_is_named(tmp_path, capsys) -> None:
    path = _write(tmp_path, f"name: r\ndata: {{kind: zurich, root: {tmp_path / 'nowhere'}}}\n")
    err = _cli_error(capsys, str(path))
    assert "data.root" in err and "nowhere" in err and "does not exist" in err


def test_dataset_kind_without_root(tmp_path, capsys) -> None:
    err = _cli_error(capsys, str(_write(tmp_path, "name: r\ndata: {kind: mai21}\n")))
    assert "needs data.root" in err


def test_malformed_yaml_gives_line_and_column(tmp_path, capsys) -> None:
    path = _write(tmp_path, "name: r\nstudent: [unclosed\n")
    err = _cli_error(capsys, str(path))
    assert f"{path}:" in err and "malformed YAML" in err


def test_set_override_is_validated_like_the_file(capsys) -> None:
    err = _cli_error(capsys, "quickstart", "--set", "prune.ratio=1.5")
    assert "quickstart.yaml: prune.ratio" in err
    recipe, _ = load_recipe("quickstart", ["student.train.steps=7", "seed=3"])
    assert recipe.student.train.steps == 7 and recipe.seed == 3


def test_missing_recipe_file(capsys) -> None:
    err = _cli_error(capsys, "no_such_recipe.yaml")
    assert "no_such_recipe.yaml" in err and "quickstart" in err


def test_extends_merges_one_level(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"name": "base", "student": {"train": {"steps": 5, "lr": 0.01}}}))
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\nstudent: {train: {steps: 9}}\n")
    recipe, _ = load_recipe(child)
    assert recipe.name == "child" and recipe.student.train.steps == 9 and recipe.student.train.lr == 0.01
    grandchild = tmp_path / "grand.yaml"
    grandchild.write_text("extends: child.yaml\nname: g\n")
    with pytest.raises(RecipeError, match="only one level"):
        load_recipe(grandchild)


def test_unknown_distillation_loss(tmp_path, capsys) -> None:
    err = _cli_error(capsys, str(_write(tmp_path, "name: r\nstudent: {distill: {loss: l7}}\n")))
    assert "student.distill.loss" in err and "unknown loss 'l7'" in err

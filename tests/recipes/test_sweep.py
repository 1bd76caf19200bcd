"""Sweeps: expansion (grid, zip), validation errors naming key and file, and shared stages run once."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from recipes.loader import RecipeError, load_recipe
from recipes.metric_keys import STAGE_METRICS
from recipes.sweep import expand_sweep, run_sweep

TINY = """\
name: tinysweep
run_until: prune
data: {patch_size: 16, patches_per_image: 2, max_side: 96, max_eval_images: 1}
student: {model: smallnet, config: {width: 4}, train: {steps: 2, batch_size: 2}}
prune: {ratio: 0.25, finetune: {steps: 1, batch_size: 2}}
export: {input_size: [16, 16]}
"""


def write(tmp_path: Path, sweep: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(TINY + sweep)
    return path


def test_grid_and_zip_expansion(tmp_path: Path) -> None:
    recipe, path = load_recipe(write(tmp_path,
                                     "sweep: {prune.ratio: [0.25, 0.5, 0.75], student.config.width: [4, 8]}\n"))
    points = expand_sweep(recipe, path)
    assert len(points) == 6
    assert [(p.recipe.prune.ratio, p.recipe.student.config["width"]) for p in points][:3] == [
        (0.25, 4), (0.25, 8), (0.5, 4)]
    assert len({p.recipe.bundle_name for p in points}) == 6  # points never share a bundle folder
    assert points[1].label == "prune.ratio=0.25, student.config.width=8"
    assert all(p.recipe.sweep is None for p in points)

    recipe, path = load_recipe(write(tmp_path, "sweep_mode: zip\nsweep: {prune.ratio: [0.25, 0.5], "
                                               "student.config.width: [4, 8]}\n"))
    assert [(p.recipe.prune.ratio, p.recipe.student.config["width"]) for p in expand_sweep(recipe, path)] == [
        (0.25, 4), (0.5, 8)]


def test_nested_set_override_is_a_dotted_key(tmp_path: Path) -> None:
    recipe, path = load_recipe(write(tmp_path, ""), ["sweep.prune.ratio=[0.1, 0.2]"])
    assert recipe.sweep == {"prune.ratio": [0.1, 0.2]}
    assert [p.recipe.prune.ratio for p in expand_sweep(recipe, path)] == [0.1, 0.2]


@pytest.mark.parametrize("sweep, expected", [
    ("sweep: {prune.rato: [0.25]}", "prune.rato: unknown key (did you mean 'ratio'?)"),
    ("sweep: {prune.ratio: [0.25, 2.0]}", "sweep point 1 [prune.ratio=2.0]: prune.ratio:"),
    ("sweep: {prune.ratio: []}", "sweep.prune.ratio: needs at least one value"),
    ("sweep: {name: [a, b]}", "sweep.name: cannot be swept"),
    ("sweep_mode: zip\nsweep: {prune.ratio: [0.25, 0.5], student.config.width: [4]}",
     "sweep_mode zip needs lists of one length"),
    ("sweep: {prune.ratio.x: [1]}", "sweep.prune.ratio.x: 'ratio' is a value, not a section"),
])
def test_bad_sweeps_name_the_key_and_the_file(tmp_path: Path, sweep: str, expected: str) -> None:
    path = write(tmp_path, sweep + "\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message, message
    assert "\n" not in message


def test_sweep_runs_shared_stages_once_and_nests_runs(tmp_path: Path) -> None:
    recipe, path = load_recipe(write(tmp_path, "sweep: {prune.ratio: [0.25, 0.5]}\n"))
    workdir = tmp_path / "work"
    sweep_id, results = run_sweep(recipe, path, workdir)
    assert [[o.cached for o in r.outcomes] for r in results] == [[False, False], [True, False]]

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = {r.info.run_id: r for r in mlflow.search_runs(experiment_names=["tinysweep"], output_format="list")}
    parent_of = {rid: r.data.tags.get("mlflow.parentRunId") for rid, r in runs.items()}
    points = [rid for rid, p in parent_of.items() if p == sweep_id]
    assert sorted(points) == sorted(r.run_id for r in results)
    assert runs[sweep_id].data.tags["run_kind"] == "sweep" and parent_of[sweep_id] is None
    student_runs = [runs[o.run_id] for r in results for o in r.outcomes if o.name == "student"]
    first, second = student_runs
    assert parent_of[first.info.run_id] == results[0].run_id and parent_of[second.info.run_id] == results[1].run_id
    assert second.data.tags["cached_from_run"] == first.info.run_id  # a link to the run that trained it
    assert f"runs/{first.info.run_id})" in second.data.tags["mlflow.note.content"]
    assert not mlflow.MlflowClient(uri).list_artifacts(second.info.run_id)  # linked, not copied

    # the same metric keys on every stage run and on every point run (MLflow's compare view lines them up)
    for rid, run in runs.items():
        if rid != sweep_id:
            assert set(STAGE_METRICS) <= set(run.data.metrics), (run.info.run_name, sorted(run.data.metrics))
    assert {"prune.ratio", "student.config.width"} <= set(runs[points[0]].data.params)
    assert runs[sweep_id].data.params["sweep.prune.ratio"] == "[0.25, 0.5]"
    assert (workdir / "compare" / "pareto_psnr_size.html").is_file()
    logged = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(sweep_id, "compare")}
    assert "compare/pareto_psnr_size.png" in logged


def test_point_selection_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from recipes.cli import main
    from recipes.loader import select_points

    assert select_points(["3"], 6) == [3]
    assert select_points(["1..3", "2", "5,0"], 6) == [1, 2, 3, 5, 0]  # in order, without repeats
    for spec, expected in [("6", "points 0..5; 6 is not one"), ("3..1", "3..1 is empty"), ("a", "expected I, I..J")]:
        with pytest.raises(RecipeError, match=expected):
            select_points([spec], 6, "s.yaml")
    path = write(tmp_path, "sweep: {prune.ratio: [0.25, 0.5]}\n")
    assert main(["run", str(path), "--point", "2", "--workdir", str(tmp_path / "w")]) == 2
    assert "--points '2': the sweep has points 0..1; 2 is not one" in capsys.readouterr().err
    assert main(["run", str(path), "--point", "0", "--no-resume"]) == 2
    assert main(["run", "quickstart", "--point", "0"]) == 2
    assert "quickstart is not a sweep" in capsys.readouterr().err
    assert main(["validate", str(path)]) == 0
    assert "sweep of 2 points 0..1" in capsys.readouterr().out


def test_slurm_example_runs_one_point_per_array_task() -> None:
    import os
    import subprocess

    from recipes.cli import _parser

    script = Path(__file__).resolve().parents[2] / "examples" / "slurm_sweep.sh"
    env = {**os.environ, "ISPDC": "echo", "SLURM_ARRAY_TASK_ID": "4", "SLURM_CPUS_PER_TASK": "2"}
    out = subprocess.run(["bash", str(script), "sweep_quickstart", "http://mlflow-host:5000", "/shared/w"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["run", "sweep_quickstart", "--point", "4", "--tracking-uri", "http://mlflow-host:5000",
                   "--workdir", "/shared/w"]
    args = _parser().parse_args(out)  # a command line ispdc takes
    assert args.points == ["4"] and args.tracking_uri == "http://mlflow-host:5000"

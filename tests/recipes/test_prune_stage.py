"""The prune stage: iterative rounds to a MACs budget, sensitivity analysis, fold before or after prune."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from compress.checkpoint import load_model
from recipes.loader import RecipeError, load_recipe
from recipes.runner import run_recipe

TINY = ["teacher.config.width=8", "teacher.train.steps=2", "teacher.train.batch_size=2",
        "student.config.width=8", "student.train.steps=4", "student.train.batch_size=2",
        "prune.finetune.steps=4", "prune.finetune.batch_size=2",
        "data.patch_size=16", "data.patches_per_image=2", "data.max_side=128", "export.input_size=[32,32]"]


def _run(tmp_path: Path, *overrides: str) -> tuple[list, dict[str, dict]]:
    spec, path = load_recipe("quickstart", [*TINY, *overrides])
    _, outcomes = run_recipe(spec, path, tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[spec.name], output_format="list")
    return outcomes, {r.data.tags.get("stage"): r for r in runs if r.data.tags.get("stage")}


def test_iterative_pruning_to_a_macs_budget_with_sensitivity(tmp_path: Path) -> None:
    outcomes, runs = _run(tmp_path, "run_until=prune", "prune.ratio=null", "prune.macs_reduction=0.4",
                          "prune.importance=magnitude", "prune.steps=2",
                          "prune.sensitivity={ratio: 0.5, derive_ratios: true}")
    metrics = runs["prune"].data.metrics
    assert metrics["macs_reduction"] >= 0.4
    assert metrics["round1_macs"] > metrics["round2_macs"]  # two rounds, each pruning further
    assert {"round1_psnr", "round2_psnr", "round1_psnr_pruned", "sensitivity_max_drop_db",
            "psnr_drop_db"} <= set(metrics)
    folder = outcomes[-1].result.model.parent
    table = json.loads((folder / "sensitivity.json").read_text())
    assert {row["layer"] for row in table} == {"conv1", "conv2"}  # conv3 feeds the RGB pixel shuffle
    assert (folder / "sensitivity.png").stat().st_size > 1000
    assert "prune_derived_layer_weights" in runs["prune"].data.params
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs["prune"].info.run_id, "sensitivity")}
    assert {"sensitivity/sensitivity.png", "sensitivity/sensitivity.md"} <= artifacts


def test_fold_before_prune_rebuilds_from_the_folded_channel_plan(tmp_path: Path) -> None:
    outcomes, _ = _run(tmp_path, "run_until=prune", "fold.before_prune=true", "prune.ratio=0.5",
                       "prune.importance=magnitude")
    assert [o.name for o in outcomes] == ["teacher", "student", "fold", "prune"]
    model, spec = load_model(outcomes[-1].result.model)
    assert spec.folded and spec.widths_after_fold and spec.widths["conv1"] == 4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_two_prune_targets_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="prune: give one of ratio, macs_reduction"):
        load_recipe("quickstart", ["prune.macs_reduction=0.5"])

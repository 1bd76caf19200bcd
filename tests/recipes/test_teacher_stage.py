"""Teacher stage variants at tiny sizes: PyNET level-wise, AA-UNet multi-level, clean-image g(J) -> J."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

from compress.checkpoint import load_model
from recipes.loader import load_recipe
from recipes.runner import run_recipe

TINY_DATA = ["data.max_side=128", "data.patch_size=32", "data.patches_per_image=2", "export.input_size=[32,32]"]


def _run(recipe: str, tmp_path: Path, *overrides: str) -> tuple[dict, dict]:
    spec, path = load_recipe(recipe, [*TINY_DATA, *overrides])
    _, outcomes = run_recipe(spec, path, tmp_path)
    assert [o.name for o in outcomes] == ["teacher"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[spec.name], output_format="list")
    stage = next(r for r in runs if r.data.tags.get("stage") == "teacher")
    return outcomes[0].result, stage.data.metrics


def test_pynet_level_wise_schedule_trains_every_level_from_the_previous_one(tmp_path: Path) -> None:
    levels = "[" + ",".join(f"{{level: {k}, train: {{steps: 2, batch_size: 1, lr: 0.01}}}}"
                            for k in range(5, -1, -1)) + "]"
    outputs, metrics = _run("pynet_teacher", tmp_path, f"teacher.levels={levels}", "teacher.config.width=0.0625")
    for k in range(6):
        assert f"level{k}_psnr" in metrics and f"level{k}_train_loss" in metrics
    folder = outputs.model.parent
    level5, _ = load_model(folder / "level5")
    level4, _ = load_model(folder / "level4")
    level1, _ = load_model(folder / "level1")
    final, _ = load_model(outputs.model)
    # level 4 continued from level 5: the shared encoder moved on; the level-0 head got no gradient
    # before level 0 was trained, so it is the same tensor in every checkpoint up to level 1.
    assert not torch.equal(level5.conv_l1_d1.conv_3a.conv2d.weight, level4.conv_l1_d1.conv_3a.conv2d.weight)
    head5, head1 = dict(level5.named_parameters()), dict(level1.named_parameters())
    untouched = [n for n in head5 if n.startswith("conv_l0")]
    assert untouched and all(torch.equal(head5[n], head1[n]) for n in untouched)
    assert any(not torch.equal(head1[n], dict(final.named_parameters())[n]) for n in untouched)


def test_aaunet_multilevel_loss_logs_each_term(tmp_path: Path) -> None:
    _, metrics = _run("aaunet_teacher", tmp_path, "teacher.config.base_width=4", "teacher.train.steps=3",
                      "teacher.train.batch_size=1")
    assert {"train_l2_mse", "train_l1_ssim", "train_loss", "psnr", "psnr_initial"} <= set(metrics)


def test_clean_image_teacher_learns_to_reconstruct_the_target(tmp_path: Path) -> None:
    _, metrics = _run(
        "quickstart", tmp_path, "run_until=teacher", "teacher.model=smallnet_clean", "teacher.config={width: 8}",
        "teacher.clean_image=true", "teacher.train.steps=150", "teacher.train.lr=0.005",
        "teacher.train.losses={mse: 1.0, ms_ssim: 0.4}", "teacher.train.batch_size=4",
    )
    assert metrics["psnr"] > metrics["psnr_initial"] + 5
    assert metrics["psnr"] > 22  # a 150-step 8-channel identity: far from perfect, far from the start


def test_clean_image_teacher_cannot_feed_output_kd() -> None:
    with pytest.raises(Exception, match="clean-image teacher"):
        load_recipe("quickstart", ["teacher.model=smallnet_clean", "teacher.config={}", "teacher.clean_image=true"])

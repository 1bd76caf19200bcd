"""The built-in trade-off study and the variant sweep axis it uses (named variants: keys set together).

No training here: the recipe is validated and expanded only.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from recipes.loader import RecipeError, load_recipe
from recipes.sweep import expand_sweep

FAMILIES = {"smallnet16": ("smallnet", {"width": 16, "batch_norm": True}),
            "lwisp025": ("lwisp", {"width": 0.25}),
            "lwisp05": ("lwisp", {"width": 0.5}),
            "pynetv2nn025": ("pynetv2_mobile_nonorm", {"width": 0.25})}
BUILDS = {("smallnet16", "int8"), ("smallnet16", "int16x8"), ("lwisp025", "int8"), ("lwisp05", "int8"),
          ("pynetv2nn025", "int8"), ("pynetv2nn025", "int16x8")}
"""LW-ISP has no int16x8 build: TFLite aborts the process allocating its int16x8 model (docs/tracking.md)."""


def test_study_expands_to_builds_x_prune_ratios() -> None:
    recipe, path = load_recipe("study_tradeoffs")
    points = expand_sweep(recipe, path)
    assert len(points) == 12
    seen = set()
    for p in points:
        family, mode = p.values["build"].split("-")
        model, config = FAMILIES[family]
        r = p.recipe
        assert (r.student.model, r.student.config) == (model, config)  # the config replaced, not merged
        assert r.quantize.mode == mode and r.quantize.variants == []
        assert r.teacher is None and r.student.distill.output_kd == 0
        assert r.export.frame_size == (1088, 1920) and r.export.require == []
        assert r.prune is not None
        seen.add((family, mode, r.prune.ratio))
    assert seen == {(f, m, ratio) for f, m in BUILDS for ratio in (0.25, 0.4)}
    assert points[3].short_label == "build=smallnet16-int16x8 ratio=0.4"
    assert len({p.recipe.bundle_name for p in points}) == 12


TINY = """\
name: tinyvariants
run_until: student
data: {patch_size: 16, patches_per_image: 2, max_side: 96}
student: {model: smallnet, config: {width: 4, batch_norm: true}, train: {steps: 1, batch_size: 2}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "v.yaml"
    path.write_text(TINY + text)
    return path


def test_variant_axis_sets_its_keys_together_in_grid_and_zip(tmp_path: Path) -> None:
    recipe, path = load_recipe(write(tmp_path, """\
sweep:
  arch:
    - {name: small, student.config: {width: 4}}
    - {student.model: lwisp, student.config: {width: 0.25}}
  seed: [0, 1]
"""))
    points = expand_sweep(recipe, path)
    assert [(p.recipe.student.model, p.recipe.student.config, p.recipe.seed) for p in points] == [
        ("smallnet", {"width": 4}, 0), ("smallnet", {"width": 4}, 1),
        ("lwisp", {"width": 0.25}, 0), ("lwisp", {"width": 0.25}, 1)]
    assert points[0].label == "arch=small, seed=0"
    assert points[2].label == "arch=model=lwisp config={'width': 0.25}, seed=0"  # unnamed: its settings

    recipe, path = load_recipe(write(tmp_path, "sweep_mode: zip\nsweep:\n  arch: [{student.config: {width: 4}}, "
                                               "{student.config: {width: 8}}]\n  seed: [3, 4]\n"))
    assert [(p.recipe.student.config["width"], p.recipe.seed) for p in expand_sweep(recipe, path)] == [(4, 3), (8, 4)]


@pytest.mark.parametrize("sweep, expected", [
    ("sweep: {arch: [smallnet]}", "sweep.arch: 'arch' is not a recipe key: its values must be named variants"),
    ("sweep: {sed: [1, 2]}", "'sed' is not a recipe key: did you mean 'seed'?"),
    ("sweep: {arch: [{name: only}]}", "its values must be named variants"),
    ("sweep: {arch: [{student.modle: lwisp}]}", "sweep point 0 [arch=modle=lwisp]: student.modle: unknown key"),
    ("sweep: {arch: [{student.model: nosuch}]}", "sweep point 0 [arch=model=nosuch]: student.model"),
])
def test_bad_variants_name_the_axis_and_the_file(tmp_path: Path, sweep: str, expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, sweep + "\n"))
    assert str(err.value).startswith(str(tmp_path / "v.yaml"))
    assert expected in str(err.value)


def test_rows_shipping_different_variants_are_each_timed_on_their_own() -> None:
    from recipes.compare import Row, format_table, trade_off

    def row(run_id: str, mode: str, psnr: float, int8_ms: float | None, own_ms: float) -> Row:
        metrics = {"psnr": psnr, "size_kb": 10.0, f"latency_ms_frame_tflite_{mode}_2t": own_ms}
        if int8_ms is not None:
            metrics["latency_ms_frame_tflite_int8_2t"] = int8_ms
        return Row(run_id, run_id, "study", metrics,
                   params={"quantize.mode": mode, "export.frame_size": "[1088, 1920]"})

    # b ships int16x8 (slow, better); it also built int8, which must not stand in for its latency
    cmp = trade_off([row("a", "int8", 20.0, None, 30.0), row("b", "int16x8", 21.0, 25.0, 4000.0)])
    assert [r.get("latency_ms") for r in cmp.rows] == [30.0, 4000.0]
    assert [r.pareto for r in cmp.rows] == [True, True]
    assert cmp.shipped == ["int16x8", "int8"] and cmp.scored
    text = format_table(cmp)
    assert "latency_ms (TFLite shipped int16x8/int8, 2 threads, 1088x1920 frame)" in text
    assert "latency: latency_ms_frame_tflite_<quantize.mode>_2t" in text

    same = trade_off([row("a", "int8", 20.0, None, 30.0), row("c", "int8", 19.0, None, 20.0)])
    assert same.shipped == [] and same.latency_key == "latency_ms_frame_tflite_int8_2t"

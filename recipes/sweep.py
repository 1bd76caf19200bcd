"""Sweeps: one recipe, many points (``sweep: {prune.ratio: [0.25, 0.5], student.config.width: [8, 16]}``).

Every point is a full recipe (the base with the point's values set) validated like a ``--set``, so a
wrong key fails before anything runs and names the key and the file.  MLflow gets one sweep run, one
nested run per point and the point's stages nested under that; stages whose inputs are equal across
points (same config, same upstream) run once through the stage cache, and later points' stage runs
link to the run that produced them (tag ``cached_from_run``) instead of copying its artifacts.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recipes.compare import compare_runs
from recipes.context import RunContext, StageOutcome, git_sha
from recipes.loader import SweepPoint, expand_sweep, recipe_hash
from recipes.runner import run_stages
from recipes.schema import Recipe, flatten
from recipes.tracking import Tracker, default_tracking_uri


@dataclass
class PointResult:
    point: SweepPoint
    run_id: str
    outcomes: list[StageOutcome]


def run_sweep(recipe: Recipe, recipe_path: Path, workdir: Path, *, tracking_uri: str | None = None,
              use_cache: bool = True, on_stage: Callable[[StageOutcome], None] | None = None,
              on_point: Callable[[SweepPoint], None] | None = None,
              compare_out: Path | None = None) -> tuple[str, list[PointResult]]:
    """Run every point as a nested run of one sweep run; afterwards the trade-off table and Pareto plots
    (``recipes.compare``) are written to ``compare_out`` (default ``<workdir>/compare``) and logged on
    the sweep run.  Returns the sweep run id and one result per point."""
    points = expand_sweep(recipe, recipe_path)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(workdir)
    tracker = Tracker(uri, experiment=recipe.name)
    tags = {"recipe": recipe.name, "recipe_hash": recipe_hash(recipe), "git_sha": git_sha(), "run_kind": "sweep",
            "sweep_keys": ", ".join(recipe.sweep or {}), "sweep_points": str(len(points))}
    params = {k: v for k, v in flatten(recipe.model_dump(mode="json", exclude={"sweep"})).items()
              if k not in (recipe.sweep or {})}
    params.update({f"sweep.{k}": v for k, v in (recipe.sweep or {}).items()})
    results: list[PointResult] = []
    shared_data = None
    with tracker.parent(run_name=f"{recipe.name} sweep", params=params, tags=tags) as sweep_id:
        tracker.log_artifact(recipe_path, artifact_path="recipe")
        for point in points:
            if on_point:
                on_point(point)
            point_tags = {"recipe": recipe.name, "recipe_hash": recipe_hash(point.recipe), "run_kind": "point",
                          "sweep_point": str(point.index), "sweep_label": point.label}
            point_tracker = Tracker(uri, experiment=recipe.name)
            with point_tracker.parent(run_name=f"p{point.index:02d} {point.short_label}", params=flatten(point.recipe),
                                      tags=point_tags, nested=True) as point_id:
                ctx = RunContext(recipe=point.recipe, recipe_path=Path(recipe_path), workdir=workdir,
                                 tracker=point_tracker)
                same_data = point.recipe.data == recipe.data and point.recipe.seed == recipe.seed
                if same_data and shared_data is not None:
                    ctx._data = shared_data  # the embedded data is synthesised once, not per point
                outcomes = run_stages(ctx, use_cache, on_stage)
                if same_data and ctx._data is not None:
                    shared_data = ctx._data
            results.append(PointResult(point, point_id, outcomes))
    compare_runs(uri, experiments=[recipe.name], parent=sweep_id, out_dir=compare_out or workdir / "compare",
                 log_to_run=sweep_id)
    return sweep_id, results

"""Sweeps: one recipe, many points (``sweep: {prune.ratio: [0.25, 0.5], student.config.width: [8, 16]}``).

Every point is a full recipe (the base with the point's values set) validated like a ``--set``, so a
wrong key fails before anything runs and names the key and the file.  MLflow gets one sweep run, one
nested run per point and the point's stages nested under that; stages whose inputs are equal across
points (same config, same upstream) run once through the stage cache, and later points' stage runs
link to the run that produced them (tag ``cached_from_run``) instead of copying its artifacts.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from recipes.loader import RecipeError, flatten, format_validation_error, recipe_hash, set_dotted
from recipes.runner import RunContext, StageOutcome, git_sha, run_stages
from recipes.schema import Recipe
from recipes.tracking import Tracker, default_tracking_uri


@dataclass(frozen=True)
class SweepPoint:
    index: int
    values: dict[str, Any]
    recipe: Recipe

    @property
    def label(self) -> str:
        """``prune.ratio=0.25, student.config.width=8``: the run name and the table's row label."""
        return ", ".join(f"{k}={v}" for k, v in self.values.items())

    @property
    def short_label(self) -> str:
        """``width=8 ratio=0.25``: last key parts (when they are unique), short enough for a UI column."""
        lasts = [k.rsplit(".", 1)[-1] for k in self.values]
        names = lasts if len(set(lasts)) == len(lasts) else list(self.values)
        return " ".join(f"{n}={v}" for n, v in zip(names, self.values.values()))


@dataclass
class PointResult:
    point: SweepPoint
    run_id: str
    outcomes: list[StageOutcome]


def sweep_values(recipe: Recipe, path: Path | str = "<recipe>") -> list[dict[str, Any]]:
    """The points' values: the product of the lists (grid) or their i-th entries (zip)."""
    if not recipe.sweep:
        return []
    keys = list(recipe.sweep)
    lists = [recipe.sweep[k] for k in keys]
    if recipe.sweep_mode == "zip":
        lengths = {k: len(v) for k, v in zip(keys, lists)}
        if len(set(lengths.values())) != 1:
            raise RecipeError(f"{path}: sweep: sweep_mode zip needs lists of one length; got "
                              + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        combos = list(zip(*lists))
    else:
        combos = list(itertools.product(*lists))
    return [dict(zip(keys, combo)) for combo in combos]


def expand_sweep(recipe: Recipe, path: Path | str = "<recipe>") -> list[SweepPoint]:
    """Every point as a validated recipe; a bad key or value raises ``RecipeError`` naming the point.

    Each point's bundle gets its own folder (``<bundle>_p<index>``) unless the sweep sets
    ``handoff.name`` itself, so points never overwrite each other's hand-off.
    """
    base = recipe.model_dump(mode="json", exclude={"sweep", "sweep_mode"})
    points = []
    for index, values in enumerate(sweep_values(recipe, path)):
        data = copy.deepcopy(base)
        for key, value in values.items():
            set_dotted(data, key, value, f"{path}: sweep.{key}")
        if "handoff.name" not in values:
            data["handoff"]["name"] = f"{recipe.bundle_name}_p{index:02d}"
        try:
            points.append(SweepPoint(index, values, Recipe.model_validate(data)))
        except ValidationError as exc:
            label = SweepPoint(index, values, recipe).label
            problems = format_validation_error(Path(str(path)), exc).replace(f"{path}: ", "")
            raise RecipeError(f"{path}: sweep point {index} [{label}]: {problems}") from None
    return points


def run_sweep(
    recipe: Recipe,
    recipe_path: Path,
    workdir: Path,
    tracking_uri: str | None = None,
    use_cache: bool = True,
    on_stage: Callable[[StageOutcome], None] | None = None,
    on_point: Callable[[SweepPoint], None] | None = None,
    compare_out: Path | None = None,
) -> tuple[str, list[PointResult]]:
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
    from recipes.compare import compare_runs

    compare_runs(uri, experiments=[recipe.name], parent=sweep_id, out_dir=compare_out or workdir / "compare",
                 log_to_run=sweep_id)
    return sweep_id, results

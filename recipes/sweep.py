"""Sweeps: one recipe, many points (``sweep: {prune.ratio: [0.25, 0.5], student.config.width: [8, 16]}``).

Every point is a full recipe (the base with the point's values set) validated like a ``--set``, so a
wrong key fails before anything runs and names the key and the file.  MLflow gets one sweep run, one
nested run per point and the point's stages nested under that; stages whose inputs are equal across
points (same config, same upstream) run once through the stage cache, and later points' stage runs
link to the run that produced them (tag ``cached_from_run``) instead of copying its artifacts.

Points fan out: any number of processes on any machines (``ispdc run SWEEP`` started N times, or
``--point I`` per Slurm array task) may run one sweep against one workdir and tracking store.  What they
share lives in ``<workdir>/sweeps/<name>-<id>/``: ``sweep.json`` names the one parent run, found or
created under ``sweep.lock``; a process claims a point with ``pNN.lock`` (an flock, freed by the kernel
when its holder dies), keeps the point's resume state in ``pNN.json`` and publishes ``pNN.done.json``
when it finished.  So a finished point is skipped, a point another process is running is left to it, a
point whose process was killed resumes (the runner's resume, into the same MLflow runs) when its command
runs again, and whichever process finishes the last point writes the comparison and closes the parent.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.atomic import atomic_write_text
from recipes.compare import compare_runs
from recipes.context import RunContext, StageOutcome, git_sha
from recipes.loader import SweepPoint, expand_sweep, recipe_hash
from recipes.locks import hold, owner_of, try_hold
from recipes.run_data import RunData
from recipes.run_state import RunState, run_exists
from recipes.runner import run_stages
from recipes.schema import Recipe, flatten
from recipes.tracking import Tracker, create_run, default_tracking_uri, end_run, log_artifact_to

SWEEPS_DIR = "sweeps"


@dataclass
class PointResult:
    point: SweepPoint
    run_id: str
    outcomes: list[StageOutcome]


def sweep_folder(recipe: Recipe, workdir: Path, tracking_uri: str) -> Path:
    """``<workdir>/sweeps/<name>-<id>``: what the processes of one sweep (same recipe, same store) share."""
    digest = hashlib.sha256(f"{recipe_hash(recipe)} {tracking_uri}".encode()).hexdigest()[:12]
    return Path(workdir) / SWEEPS_DIR / f"{recipe.name}-{digest}"


def _point_file(folder: Path, index: int, suffix: str) -> Path:
    return folder / f"p{index:02d}{suffix}"


def run_sweep(recipe: Recipe, recipe_path: Path, workdir: Path, *, tracking_uri: str | None = None,
              use_cache: bool = True, on_stage: Callable[[StageOutcome], None] | None = None,
              on_point: Callable[[SweepPoint], None] | None = None,
              compare_out: Path | None = None, points: Sequence[int] | None = None, resume: bool = True,
              say: Callable[[str], None] | None = None) -> tuple[str, list[PointResult]]:
    """Run the sweep's ``points`` (default all) that are neither finished nor claimed by another process,
    each as a nested run of the one sweep run; when every point of the sweep is finished, the trade-off
    table and Pareto plots (``recipes.compare``) are written to ``compare_out`` (default
    ``<workdir>/compare``) and logged on the sweep run, which is then closed.  ``resume=False`` starts a
    new sweep run (every point again; the stage cache still applies).  ``say`` gets one line per point
    skipped and one about the sweep's state.  Returns the sweep run id and one result per point run here."""
    all_points = expand_sweep(recipe, recipe_path)
    chosen = all_points if points is None else [all_points[i] for i in points]
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(workdir)
    tell = say or (lambda line: None)
    tracker = Tracker(uri, experiment=recipe.name)  # the store (created under its lock) and the experiment
    folder = sweep_folder(recipe, workdir, uri)
    sweep_id = _sweep_run(tracker, recipe, Path(recipe_path), folder, len(all_points), resume)
    results: list[PointResult] = []
    shared: dict[str, RunData] = {}
    for point in chosen:
        name = f"p{point.index:02d} {point.short_label}"
        done = _point_file(folder, point.index, ".done.json")
        if done.is_file():
            tell(f"{name}: finished earlier (run {_done_run(done)}); skipped")
            continue
        lock = _point_file(folder, point.index, ".lock")
        with try_hold(lock) as mine:
            if not mine:
                tell(f"{name}: being run by another process ({owner_of(lock) or 'unknown'}); left to it")
                continue
            if done.is_file():  # finished by another process between the two looks
                tell(f"{name}: finished meanwhile (run {_done_run(done)}); skipped")
                continue
            if on_point:
                on_point(point)
            results.append(_run_point(point, recipe, Path(recipe_path), workdir, uri, sweep_id, folder,
                                      use_cache, on_stage, shared))
    _close_if_complete(recipe, folder, uri, sweep_id, len(all_points), compare_out or workdir / "compare", tell)
    return sweep_id, results


def _sweep_run(tracker: Tracker, recipe: Recipe, recipe_path: Path, folder: Path, count: int, resume: bool) -> str:
    """The sweep's one parent run: the one ``sweep.json`` names (if the store still has it and ``resume``),
    else a new one; under the sweep's lock, so processes started at once agree on it."""
    uri = tracker.tracking_uri
    record = folder / "sweep.json"
    with hold(folder / "sweep.lock", "the sweep's parent run", quiet=True):
        known = json.loads(record.read_text()) if record.is_file() else {}
        parent = known.get("parent_run_id")
        if resume and parent and run_exists(uri, parent):
            return str(parent)
        for stale in folder.glob("p*.json"):  # a new sweep run: every point runs (from the stage cache) again
            stale.unlink()
        tags = {"recipe": recipe.name, "recipe_hash": recipe_hash(recipe), "git_sha": git_sha(), "run_kind": "sweep",
                "sweep_keys": ", ".join(recipe.sweep or {}), "sweep_points": str(count), "sweep_id": folder.name}
        params = {k: v for k, v in flatten(recipe.model_dump(mode="json", exclude={"sweep"})).items()
                  if k not in (recipe.sweep or {})}
        params.update({f"sweep.{k}": v for k, v in (recipe.sweep or {}).items()})
        parent = create_run(uri, tracker.experiment_id, f"{recipe.name} sweep", params, tags)
        log_artifact_to(uri, parent, recipe_path, artifact_path="recipe")
        atomic_write_text(record, json.dumps({"parent_run_id": parent, "tracking_uri": uri, "points": count,
                                              "complete": False}, indent=2))
        return str(parent)


def _run_point(point: SweepPoint, recipe: Recipe, recipe_path: Path, workdir: Path, uri: str, sweep_id: str,
               folder: Path, use_cache: bool, on_stage: Callable[[StageOutcome], None] | None,
               shared: dict[str, RunData]) -> PointResult:
    """One claimed point, resumed into its runs if an earlier process was killed inside it."""
    state_path = _point_file(folder, point.index, ".json")
    state = RunState.open(workdir, recipe_hash(point.recipe), uri, path=state_path)
    if state.resumed and not (state.parent_run_id and run_exists(uri, state.parent_run_id)):
        state = RunState.open(workdir, recipe_hash(point.recipe), uri, resume=False, path=state_path)
    tags = {"recipe": recipe.name, "recipe_hash": recipe_hash(point.recipe), "run_kind": "point",
            "sweep_point": str(point.index), "sweep_label": point.label, "sweep_id": folder.name}
    tracker = Tracker(uri, experiment=recipe.name)
    with tracker.parent(run_name=f"p{point.index:02d} {point.short_label}", params=flatten(point.recipe), tags=tags,
                        parent_run_id=sweep_id, run_id=state.parent_run_id if state.resumed else None) as point_id:
        state.start_parent(point_id)
        ctx = RunContext(recipe=point.recipe, recipe_path=recipe_path, workdir=workdir, tracker=tracker,
                         run_state=state)
        same_data = point.recipe.data == recipe.data and point.recipe.seed == recipe.seed
        if same_data and "base" in shared:
            ctx._data = shared["base"]  # the embedded data is synthesised once per process, not per point
        outcomes = run_stages(ctx, use_cache, on_stage)
        if same_data and ctx._data is not None:
            shared["base"] = ctx._data
    atomic_write_text(_point_file(folder, point.index, ".done.json"), json.dumps({"run_id": point_id}))
    state.clear()
    return PointResult(point, point_id, outcomes)


def _done_run(done: Path) -> str:
    try:
        return str(json.loads(done.read_text()).get("run_id", "?"))
    except (OSError, ValueError):
        return "?"


def _close_if_complete(recipe: Recipe, folder: Path, uri: str, sweep_id: str, count: int, out: Path,
                       tell: Callable[[str], None]) -> None:
    """When every point is finished: the comparison on the sweep run, which is then closed (once, by
    whichever process gets here first)."""
    record = folder / "sweep.json"
    with hold(folder / "sweep.lock", "the sweep's parent run", quiet=True):
        known: dict[str, Any] = json.loads(record.read_text())
        left = [i for i in range(count) if not _point_file(folder, i, ".done.json").is_file()]
        if left:
            tell(f"sweep run {sweep_id}: {count - len(left)} of {count} points finished; not yet run or running "
                 f"elsewhere: {', '.join(f'p{i:02d}' for i in left)}")
            return
        if known.get("complete") and known.get("parent_run_id") == sweep_id:
            tell(f"sweep run {sweep_id}: all {count} points finished")
            return
        compare_runs(uri, experiments=[recipe.name], parent=sweep_id, out_dir=out, log_to_run=sweep_id)
        end_run(uri, sweep_id)
        atomic_write_text(record, json.dumps({**known, "complete": True}, indent=2))
        tell(f"sweep run {sweep_id}: all {count} points finished; comparison in {out} and on the sweep run")

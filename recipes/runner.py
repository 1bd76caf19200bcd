"""Run a recipe: stages in order, each a nested MLflow run, each cached by what it depends on.

A stage's cache key hashes its own config, the data config, the seed and the key of the stage before
it; a finished stage writes ``done.json`` into ``<workdir>/stages/<stage>-<key>/``.  Re-running a recipe
where only a late stage changed reuses the earlier stages (logged again, tagged ``cached``).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from recipes.loader import flatten, recipe_hash
from recipes.schema import STAGE_ORDER, Recipe
from recipes.tracking import Tracker, default_tracking_uri

CACHE_VERSION = "1"
DONE_FILE = "done.json"


class StageError(RuntimeError):
    """A stage that cannot finish (a failed gate, a failed conversion): the message says why."""


@dataclass
class StageOutcome:
    name: str
    metrics: dict[str, float]
    outputs: dict[str, str]
    seconds: float
    cached: bool
    run_id: str
    key: str


@dataclass
class RunContext:
    recipe: Recipe
    recipe_path: Path
    workdir: Path
    tracker: Tracker
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)
    _data: Any = None

    @property
    def data(self):  # noqa: ANN201  (distill.data types; loaded once, lazily)
        if self._data is None:
            from recipes.stages import load_run_data

            self._data = load_run_data(self.recipe)
        return self._data

    def output(self, stage: str, name: str) -> Path:
        return Path(self.outcomes[stage].outputs[name])

    def model_dir(self) -> Path:
        """The newest student model: of the student, prune and fold stages, the one that ran last."""
        for stage in reversed(list(self.outcomes)):
            if stage in ("fold", "prune", "student") and "model" in self.outcomes[stage].outputs:
                return self.output(stage, "model")
        raise StageError("no student model has been produced yet")


StageFn = Callable[[RunContext, Path], tuple[dict[str, float], dict[str, str]]]


def stage_plan(recipe: Recipe) -> list[tuple[str, Any]]:
    """(stage name, its config block) in execution order; absent optional stages are skipped."""
    plan: list[tuple[str, Any]] = []
    if recipe.teacher is not None:
        plan.append(("teacher", recipe.teacher))
    plan.append(("student", recipe.student))
    compress = [("prune", recipe.prune)] if recipe.prune is not None else []
    if recipe.fold.enabled:
        compress.insert(0 if recipe.fold.before_prune else len(compress), ("fold", recipe.fold))
    plan += compress
    plan += [("quantize", recipe.quantize), ("export", recipe.export), ("handoff", recipe.handoff)]
    names = [name for name, _ in plan]
    if recipe.run_until in names:  # positional: fold may run before prune
        return plan[: names.index(recipe.run_until) + 1]
    last = STAGE_ORDER.index(recipe.run_until)
    return [(name, cfg) for name, cfg in plan if STAGE_ORDER.index(name) <= last]


def stage_key(name: str, config: Any, recipe: Recipe, upstream: str) -> str:
    payload = {
        "version": CACHE_VERSION,
        "stage": name,
        "config": config.model_dump(mode="json"),
        "data": recipe.data.model_dump(mode="json"),
        "seed": recipe.seed,
        "upstream": upstream,
    }
    if name == "quantize":  # calibration crops are cut at the export input size
        payload["input_size"] = list(recipe.export.input_size)
    if name == "export":  # export reads the calibration, data and model of earlier stages, and its own size
        payload["quantize"] = recipe.quantize.model_dump(mode="json")
    if name == "handoff":
        payload["recipe"] = recipe_hash(recipe)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_recipe(
    recipe: Recipe,
    recipe_path: Path,
    workdir: Path,
    tracking_uri: str | None = None,
    use_cache: bool = True,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> tuple[str, list[StageOutcome]]:
    """Run every stage; returns the parent MLflow run id and the outcomes in order."""
    from recipes.stages import STAGES

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(tracking_uri or default_tracking_uri(workdir), experiment=recipe.name)
    ctx = RunContext(recipe=recipe, recipe_path=Path(recipe_path), workdir=workdir, tracker=tracker)
    tags = {"recipe": recipe.name, "recipe_hash": recipe_hash(recipe), "git_sha": git_sha()}
    outcomes: list[StageOutcome] = []
    with tracker.parent(run_name=recipe.name, params=flatten(recipe), tags=tags) as parent_id:
        tracker.log_artifact(recipe_path, artifact_path="recipe")
        upstream = ""
        for name, config in stage_plan(recipe):
            key = stage_key(name, config, recipe, upstream)
            outcome = _run_stage(ctx, name, key, STAGES[name], use_cache)
            ctx.outcomes[name] = outcome
            outcomes.append(outcome)
            upstream = key
            if on_stage:
                on_stage(outcome)
        tracker.log_metrics({f"{o.name}_seconds": o.seconds for o in outcomes})
    return parent_id, outcomes


def _run_stage(ctx: RunContext, name: str, key: str, fn: StageFn, use_cache: bool) -> StageOutcome:
    folder = ctx.workdir / "stages" / f"{name}-{key}"
    done = folder / DONE_FILE
    cached = use_cache and done.is_file() and name != "handoff"
    with ctx.tracker.stage(name, tags={"cache_key": key, "cached": str(cached).lower()}) as run_id:
        start = time.perf_counter()
        if cached:
            record = json.loads(done.read_text())
            metrics, outputs = record["metrics"], record["outputs"]
            ctx.tracker.set_tags({"cached_from_run": record.get("run_id", "")})
            ctx.tracker.log_metrics(metrics)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            metrics, outputs = fn(ctx, folder)
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps({"metrics": metrics, "outputs": outputs, "run_id": run_id}, indent=2))
            tmp.replace(done)
        seconds = time.perf_counter() - start
        ctx.tracker.log_metrics({"stage_seconds": seconds})
    return StageOutcome(name, metrics, outputs, seconds, cached, run_id, key)

"""Run a recipe: stages in order, each a nested MLflow run, each cached by what it depends on.

A stage's cache key hashes its own config, the data config, the seed and the key of the stage before
it; a finished stage writes ``done.json`` into ``<workdir>/stages/<stage>-<key>/``.  Re-running a recipe
where only a late stage changed reuses the earlier stages (logged again, tagged ``cached``).

Runs may share a workdir: a stage is produced under a lock of its own (``<workdir>/.locks/``), so two
runs never write one stage folder at once; the second waits (one line says for what) and then takes the
stage from the cache, published atomically by ``done.json``.  Whole-recipe runs in one workdir take turns
(they share ``run_state.json``); sweep points keep their own state and only meet at the stages.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import distributed
from distill.atomic import atomic_write_text
from recipes.context import RunContext, StageError, StageFn, StageOutcome, git_sha
from recipes.ddp import NullTracker, stage_barriers, stage_scope, trains
from recipes.loader import recipe_hash
from recipes.locks import LOCK_DIR, hold
from recipes.metric_keys import summary_metrics
from recipes.registry import register_bundle
from recipes.results import HandoffResult, read_result
from recipes.run_state import RunState, clear_checkpoints, run_exists
from recipes.schema import STAGE_ORDER, Recipe, flatten
from recipes.stages import STAGES
from recipes.teacher_checkpoint import checkpoint_digest
from recipes.tracking import Tracker, default_tracking_uri, prepare_store

__all__ = ["run_recipe", "run_stages", "stage_plan", "stage_key", "RunContext", "StageError", "StageOutcome",
           "git_sha"]

CACHE_VERSION = "2"  # 2: done.json holds a typed stage result ("result") instead of a string dict
DONE_FILE = "done.json"


def stage_plan(recipe: Recipe) -> list[tuple[str, Any]]:
    """(stage name, its config block) in execution order; absent optional stages are skipped."""
    plan: list[tuple[str, Any]] = []
    if recipe.teacher is not None:
        plan.append(("teacher", recipe.teacher))
    plan.append(("student", recipe.student))
    compress: list[tuple[str, Any]] = [("prune", recipe.prune)] if recipe.prune is not None else []
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
    if name == "quantize":  # calibration crops are cut at the export input size; variants are export's
        payload["input_size"] = list(recipe.export.input_size)
        payload["config"] = config.model_dump(mode="json", include={"calibration_frames", "calibration_selection",
                                                                    "qat"})
    if name == "export":  # export reads the calibration, data and model of earlier stages, and its own size
        payload["quantize"] = recipe.quantize.model_dump(mode="json")
    if name == "handoff":
        payload["recipe"] = recipe_hash(recipe)
    if name == "teacher" and getattr(config, "checkpoint", None) is not None:  # a replaced file: a new teacher
        payload["checkpoint"] = checkpoint_digest(config.checkpoint)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run_recipe(
    recipe: Recipe,
    recipe_path: Path,
    workdir: Path,
    tracking_uri: str | None = None,
    use_cache: bool = True,
    on_stage: Callable[[StageOutcome], None] | None = None,
    resume: bool = True,
) -> tuple[str, list[StageOutcome]]:
    """Run every stage; returns the parent MLflow run id and the outcomes in order.

    ``resume``: if a previous run of this recipe in ``workdir`` was interrupted (``run_state.json``), finish
    it into the same MLflow runs: finished stages are skipped, the interrupted one resumes from its
    checkpoint.  Under torchrun, ranks other than 0 follow (``recipes.ddp``) and return ("", outcomes).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(workdir)
    if not distributed.is_main():
        return _run_recipe(recipe, recipe_path, workdir, uri, use_cache, on_stage, resume)
    with hold(workdir / LOCK_DIR / "run.lock", f"another ispdc run in {workdir} to finish (runs of whole recipes "
              "in one workdir take turns)"):
        return _run_recipe(recipe, recipe_path, workdir, uri, use_cache, on_stage, resume)


def _run_recipe(recipe: Recipe, recipe_path: Path, workdir: Path, uri: str, use_cache: bool,
                on_stage: Callable[[StageOutcome], None] | None, resume: bool) -> tuple[str, list[StageOutcome]]:
    main = distributed.is_main()
    if main:
        prepare_store(uri)
    state = RunState.open(workdir, recipe_hash(recipe), uri, resume=resume, writable=main)
    if state.resumed and not (state.parent_run_id and run_exists(uri, state.parent_run_id)):
        state = RunState.open(workdir, recipe_hash(recipe), uri, resume=False, writable=main)
    distributed.barrier()  # every rank read the old state before rank 0 rewrites it
    if not main:
        ctx = RunContext(recipe=recipe, recipe_path=Path(recipe_path), workdir=workdir, tracker=NullTracker(),
                         run_state=state)
        return "", follow_recipe(ctx, use_cache, state)
    tracker = Tracker(uri, experiment=recipe.name)
    ctx = RunContext(recipe=recipe, recipe_path=Path(recipe_path), workdir=workdir, tracker=tracker,
                     run_state=state)
    tags = {"recipe": recipe.name, "recipe_hash": recipe_hash(recipe), "git_sha": git_sha(), "run_kind": "recipe"}
    with tracker.parent(run_name=recipe.name, params=flatten(recipe), tags=tags,
                        run_id=state.parent_run_id if state.resumed else None) as parent_id:
        state.start_parent(parent_id)
        tracker.log_artifact(recipe_path, artifact_path="recipe")
        outcomes = run_stages(ctx, use_cache, on_stage)
    state.clear()
    return parent_id, outcomes


def run_stages(ctx: RunContext, use_cache: bool = True,
               on_stage: Callable[[StageOutcome], None] | None = None) -> list[StageOutcome]:
    """The stages of ``ctx.recipe`` as nested runs of the active run, which then gets the summary
    metrics (``recipes.metric_keys``) and, if the recipe asks, the bundle registered as a model version."""
    outcomes: list[StageOutcome] = []
    upstream = ""
    for name, config in stage_plan(ctx.recipe):
        key = stage_key(name, config, ctx.recipe, upstream)
        outcome = _run_stage(ctx, name, key, STAGES[name], use_cache)
        ctx.outcomes[name] = outcome
        outcomes.append(outcome)
        upstream = key
        if on_stage:
            on_stage(outcome)
    ctx.tracker.log_metrics({f"{o.name}_seconds": o.seconds for o in outcomes})
    ctx.tracker.log_metrics(summary_metrics(outcomes))
    register = ctx.recipe.handoff.register
    bundle = next((o.result.bundle for o in outcomes if isinstance(o.result, HandoffResult)), None)
    if register is not None and bundle is not None:
        register_bundle(bundle, register.name, alias=register.alias, tracking_uri=ctx.tracker.tracking_uri)
    return outcomes


def _seed_stage(seed: int, name: str) -> None:
    """Seed torch, numpy and random per stage, so a stage's model initialisation does not depend on what
    ran before it in this process (a resumed run skips the finished stages)."""
    value = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _run_stage(ctx: RunContext, name: str, key: str, fn: StageFn, use_cache: bool) -> StageOutcome:
    folder = ctx.workdir / "stages" / f"{name}-{key}"
    done = folder / DONE_FILE
    state = ctx.run_state
    finished = state.finished(name, key, done) if state is not None else None
    if finished is not None:  # done before the interruption: keep its run, log nothing again
        with stage_barriers():
            record = json.loads(done.read_text())
        return StageOutcome(name, record["metrics"], read_result(name, record["result"]),
                            float(finished.get("seconds", 0.0)), True, finished["run_id"], key)
    lock = ctx.workdir / LOCK_DIR / f"stage-{name}-{key}.lock"
    with hold(lock, f"stage {name}-{key}, which another run is producing"):
        return _produce_stage(ctx, name, key, fn, use_cache, folder)


def _produce_stage(ctx: RunContext, name: str, key: str, fn: StageFn, use_cache: bool,
                   folder: Path) -> StageOutcome:
    """Run (or take from the cache) one stage, holding its lock: ``done.json`` is checked only now, so a
    stage another run just finished is taken from the cache, not made twice."""
    done = folder / DONE_FILE
    state = ctx.run_state
    cached = use_cache and done.is_file() and name != "handoff"
    resume_id = state.interrupted_run(name, key) if state is not None and not cached else None
    if not cached and resume_id is None:
        clear_checkpoints(folder)  # a fresh start never resumes a stale checkpoint
    with stage_barriers(), ctx.tracker.stage(name, tags={"cache_key": key, "cached": str(cached).lower()},
                                             run_id=resume_id) as run_id:
        if state is not None:
            state.start_stage(name, key, run_id)
        start = time.perf_counter()
        if cached:
            record = json.loads(done.read_text())
            metrics, result = record["metrics"], read_result(name, record["result"])
            source = record.get("run_id", "")
            # a link, not a copy: the run that produced these outputs holds the artifacts
            ctx.tracker.set_tags({"cached_from_run": source, "mlflow.note.content":
                                  f"Cached: outputs and artifacts are those of run [{source}]"
                                  f"(#/experiments/{ctx.tracker.experiment_id}/runs/{source})."})
            ctx.tracker.log_metrics(metrics)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            with stage_scope(name, ctx.recipe):
                _seed_stage(ctx.recipe.seed, name)
                metrics, result = fn(ctx, folder)
            # a full disk: OSError naming done.json, no torn file
            atomic_write_text(done, json.dumps({"metrics": metrics, "result": result.to_json(), "run_id": run_id},
                                               indent=2))
        seconds = time.perf_counter() - start
        ctx.tracker.log_metrics({"stage_seconds": seconds})
    if state is not None:
        state.finish_stage(name, seconds)
    return StageOutcome(name, metrics, result, seconds, cached, run_id, key)


def follow_recipe(ctx: RunContext, use_cache: bool, state: RunState) -> list[StageOutcome]:
    """A follower rank's pass over the recipe (``recipes.ddp``): join the training stages, wait out the
    others, and take each stage's outcome from rank 0's ``done.json``."""
    rank = distributed.info().rank
    outcomes: list[StageOutcome] = []
    upstream = ""
    for name, config in stage_plan(ctx.recipe):
        key = stage_key(name, config, ctx.recipe, upstream)
        folder = ctx.workdir / "stages" / f"{name}-{key}"
        done = folder / DONE_FILE
        distributed.barrier()
        finished = state.finished(name, key, done) is not None
        cached = finished or (use_cache and done.is_file() and name != "handoff")
        if trains(name, ctx.recipe) and not cached:
            scratch = ctx.workdir / ".ddp" / f"rank{rank}" / folder.name
            scratch.mkdir(parents=True, exist_ok=True)
            ctx.checkpoint_dir = folder  # read rank 0's checkpoints to resume alike; never written here
            try:
                STAGES[name](ctx, scratch)
            finally:
                ctx.checkpoint_dir = None
                shutil.rmtree(scratch, ignore_errors=True)  # a follower's copies of rank 0's outputs
        distributed.barrier()
        record = json.loads(done.read_text())
        outcome = StageOutcome(name, record["metrics"], read_result(name, record["result"]), 0.0, cached,
                               record.get("run_id", ""), key)
        ctx.outcomes[name] = outcome
        outcomes.append(outcome)
        upstream = key
    return outcomes

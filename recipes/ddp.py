"""A recipe under torchrun: rank 0 runs the recipe as usual; the other ranks follow it.

Training stages (teacher, student, prune with its KD fine-tune, quantize with QAT) run on every rank, DDP inside
``distill.trainer.train``.  Everything else (export, quantize, hand-off, fold) runs on rank 0 alone
(``distill.distributed.solo``) while the others wait at a barrier.  Only rank 0 talks to MLflow and
writes stage folders, checkpoints, ``done.json`` and ``run_state.json``; a follower writes its throw-away
stage outputs under ``<workdir>/.ddp/rank<r>/`` and takes each stage's outcome from rank 0's ``done.json``.

Per stage both sides pass two barriers: after the stage's start-up (stale checkpoints cleared) and after
rank 0 wrote ``done.json``.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from distill import distributed

TRAINING_STAGES = frozenset({"teacher", "student", "prune"})


class NullTracker:
    """The tracker of a follower rank: every logging call is a no-op (rank 0 logs for all)."""

    tracking_uri = ""
    parent_run_id: str | None = None
    experiment_id = ""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def trains(name: str, recipe: Any) -> bool:
    """Whether the stage trains (all ranks join it): teacher, student, prune, and quantize with QAT."""
    return name in TRAINING_STAGES or (name == "quantize" and recipe.quantize.qat is not None)


def stage_scope(name: str, recipe: Any) -> contextlib.AbstractContextManager[None]:
    """Where rank 0 runs a stage body: with the other ranks for training stages, alone otherwise."""
    return contextlib.nullcontext() if trains(name, recipe) else distributed.solo()


@contextlib.contextmanager
def stage_barriers() -> Iterator[None]:
    """Rank 0's side of a stage: a barrier before it and one after ``done.json`` is written.  On an
    error there is no closing barrier: rank 0 exits and torchrun stops the others."""
    distributed.barrier()
    yield
    distributed.barrier()


def follow_recipe(ctx: Any, use_cache: bool, state: Any) -> list[Any]:
    """A follower rank's pass over the recipe: join the training stages, wait out the others."""
    from recipes.runner import DONE_FILE, StageOutcome, stage_key, stage_plan
    from recipes.stages import STAGES

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
        outcome = StageOutcome(name, record["metrics"], record["outputs"], 0.0, cached, record.get("run_id", ""), key)
        ctx.outcomes[name] = outcome
        outcomes.append(outcome)
        upstream = key
    return outcomes


def checkpoint_path(ctx: Any, folder: Path, name: str = "checkpoint") -> Path:
    """Where a stage's training checkpoint lives: rank 0's stage folder, on every rank."""
    return Path(getattr(ctx, "checkpoint_dir", None) or folder) / f"{name}.pt"

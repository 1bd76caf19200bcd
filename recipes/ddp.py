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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def checkpoint_path(ctx: Any, folder: Path, name: str = "checkpoint") -> Path:
    """Where a stage's training checkpoint lives: rank 0's stage folder, on every rank."""
    return Path(getattr(ctx, "checkpoint_dir", None) or folder) / f"{name}.pt"

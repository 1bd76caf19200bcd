"""The run context: what a stage sees of the run (recipe, workdir, tracker, earlier stages' results).

Both the runner and every stage module import this module and nothing of each other, which keeps the
stages out of the runner's import graph.
"""
from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from recipes.results import ModelResult, StageResult
from recipes.run_data import HeldOutTooSmall, RunData, load_run_data
from recipes.run_state import RunState
from recipes.schema import Recipe

ResultT = TypeVar("ResultT", bound=StageResult)
MODEL_STAGES = ("quantize", "fold", "prune", "student")
"""Stages whose model the next one starts from, the one that ran last first."""


class StageError(RuntimeError):
    """A stage that cannot finish (a failed gate, a failed conversion): the message says why."""


@dataclass
class StageOutcome:
    name: str
    metrics: dict[str, float]
    result: StageResult
    seconds: float
    cached: bool
    run_id: str
    key: str

    def typed(self, kind: type[ResultT]) -> ResultT:
        """The result as the type this stage produces (``outcome.typed(ModelResult).model``)."""
        if not isinstance(self.result, kind):
            raise TypeError(f"stage {self.name} produced {type(self.result).__name__}, not {kind.__name__}")
        return self.result


@dataclass
class RunContext:
    recipe: Recipe
    recipe_path: Path
    workdir: Path
    tracker: Any  # TrackerLike (recipes.tracking.Tracker or recipes.ddp.NullTracker)
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)
    run_state: RunState | None = None  # what a killed run leaves to resume from
    checkpoint_dir: Path | None = None  # a DDP follower reads rank 0's stage checkpoints from here
    _data: RunData | None = None

    @property
    def data(self) -> RunData:
        """The recipe's data, loaded on first use (a fully cached run never loads it)."""
        if self._data is None:
            self._data = load_run_data(self.recipe)
        return self._data

    def eval_crops(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out centre crops at the export input size that every stage scores on."""
        try:
            return self.data.eval_crops(self.recipe.export.input_size)
        except HeldOutTooSmall as exc:
            raise StageError(f"export: {exc}") from None

    def result(self, stage: str, kind: type[ResultT]) -> ResultT:
        """The typed result of an earlier stage."""
        return self.outcomes[stage].typed(kind)

    def model_dir(self) -> Path:
        """The newest student model: of the student, prune, fold and quantize (QAT) stages, the one that
        ran last."""
        for stage in reversed(list(self.outcomes)):
            result = self.outcomes[stage].result
            if stage in MODEL_STAGES and isinstance(result, ModelResult):
                return result.model
        raise StageError("no student model has been produced yet")


StageFn = Callable[[RunContext, Path], tuple[dict[str, float], StageResult]]


def git_sha() -> str:
    """The commit the run came from (``-dirty`` with local changes), for provenance."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"

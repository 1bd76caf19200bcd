"""``<workdir>/run_state.json``: what a killed recipe run leaves behind so the next ``ispdc run`` resumes it.

It names the parent MLflow run and, per stage, the nested run id, cache key and whether the stage
finished (a sweep point keeps the same record in ``<workdir>/sweeps/<sweep>/p<NN>.json``).  It is
rewritten atomically at every stage start and end and deleted when the run finishes; ``ispdc run`` on
the same recipe (same recipe hash and tracking URI) picks it up, ``--no-resume`` ignores it.
The stage itself resumes from its checkpoint (``distill.checkpointing``).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.atomic import atomic_write_text

STATE_FILE = "run_state.json"
RUNNING, DONE = "running", "done"


@dataclass
class RunState:
    path: Path
    recipe_hash: str
    tracking_uri: str
    parent_run_id: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed: bool = False
    writable: bool = True  # only rank 0 of a distributed run writes the file

    @classmethod
    def open(cls, workdir: Path, recipe_hash: str, tracking_uri: str, resume: bool = True,
             writable: bool = True, path: Path | None = None) -> RunState:
        """The state of an interrupted run of this recipe in ``workdir`` if ``resume``, else a fresh one;
        ``path`` instead of ``<workdir>/run_state.json`` for a run that keeps its own (a sweep point)."""
        path = Path(path) if path is not None else Path(workdir) / STATE_FILE
        fresh = cls(path, recipe_hash, tracking_uri, writable=writable)
        if not resume or not path.is_file():
            return fresh
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            warnings.warn(f"{path} is unreadable ({exc}); starting a fresh run", stacklevel=2)
            return fresh
        if data.get("recipe_hash") != recipe_hash or data.get("tracking_uri") != tracking_uri:
            return fresh  # another recipe (or store) ran here last: nothing of it to resume
        return cls(path, recipe_hash, tracking_uri, data.get("parent_run_id"), dict(data.get("stages", {})),
                   resumed=data.get("parent_run_id") is not None, writable=writable)

    def save(self) -> None:
        if not self.writable:
            return
        payload = {"recipe_hash": self.recipe_hash, "tracking_uri": self.tracking_uri,
                   "parent_run_id": self.parent_run_id, "stages": self.stages}
        atomic_write_text(self.path, json.dumps(payload, indent=2))

    def start_parent(self, run_id: str) -> None:
        self.parent_run_id = run_id
        self.save()

    def finished(self, name: str, key: str, done: Path) -> dict[str, Any] | None:
        """This run's record of stage ``name`` if it finished before the interruption (and its
        ``done.json`` is still there), else None."""
        record = self.stages.get(name)
        if self.resumed and record and record["key"] == key and record["status"] == DONE and done.is_file():
            return record
        return None

    def interrupted_run(self, name: str, key: str) -> str | None:
        """The MLflow run id of stage ``name`` if the interrupted run was inside it (same cache key)."""
        record = self.stages.get(name)
        if self.resumed and record and record["key"] == key and record["status"] == RUNNING:
            return record["run_id"]
        return None

    def start_stage(self, name: str, key: str, run_id: str) -> None:
        self.stages[name] = {"key": key, "run_id": run_id, "status": RUNNING}
        self.save()

    def finish_stage(self, name: str, seconds: float) -> None:
        self.stages[name].update(status=DONE, seconds=seconds)
        self.save()

    def clear(self) -> None:
        """A finished run leaves nothing to resume."""
        if self.writable:
            self.path.unlink(missing_ok=True)


def run_exists(tracking_uri: str, run_id: str) -> bool:
    """Whether the store still holds ``run_id`` (not deleted): a state file outliving its store is stale."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri).get_run(run_id).info.lifecycle_stage != "deleted"
    except MlflowException:
        return False


def clear_checkpoints(folder: Path) -> None:
    """Remove a stage folder's training checkpoints, so a stage that starts afresh does not resume."""
    if folder.is_dir():
        for path in folder.glob("checkpoint*.pt"):
            path.unlink(missing_ok=True)

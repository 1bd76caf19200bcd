"""MLflow tracking: one parent run per recipe run, one nested run per stage.

Kept thin on purpose: stages call ``log_metrics`` / ``log_artifact`` on the tracker, so the runner can
be tested against a throw-away SQLite store and pointed at a real server with ``--tracking-uri``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import mlflow

MAX_PARAM_CHARS = 500  # MLflow's limit on a param value


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{(Path(workdir).resolve() / 'mlflow.db').as_posix()}"


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.experiment_id = mlflow.set_experiment(experiment).experiment_id
        self.parent_run_id: str | None = None

    @contextlib.contextmanager
    def parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[str]:
        with mlflow.start_run(run_name=run_name, tags=tags) as run:
            self.parent_run_id = run.info.run_id
            mlflow.log_params({k: _param_value(v) for k, v in params.items()})
            yield run.info.run_id

    @contextlib.contextmanager
    def stage(self, name: str, tags: dict[str, str] | None = None) -> Iterator[str]:
        with mlflow.start_run(run_name=name, nested=True, tags={"stage": name, **(tags or {})}) as run:
            yield run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."

"""MLflow tracking: one parent run per recipe run, one nested run per stage.

Kept thin on purpose: stages call ``log_metrics`` / ``log_artifact`` on the tracker, so the runner can
be tested against a throw-away SQLite store and pointed at a real server with ``--tracking-uri``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from recipes.preflight import check_tracking_uri

MAX_PARAM_CHARS = 500  # MLflow's limit on a param value


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{(Path(workdir).resolve() / 'mlflow.db').as_posix()}"


def local_artifact_location(tracking_uri: str) -> str | None:
    """``<folder of mlflow.db>/mlartifacts`` for a SQLite store, else None (a server decides itself).

    Without it MLflow puts a SQLite store's artifacts in ``./mlruns`` of whatever folder the command
    ran in, far from the run folder that holds the store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    return (db.parent / "mlartifacts").as_uri()


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, creating it (with artifacts beside a local store) and making it active."""
    client = mlflow.MlflowClient(tracking_uri)
    location = local_artifact_location(tracking_uri)
    if location is not None and client.get_experiment_by_name(name) is None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # created meanwhile by another process
            client.create_experiment(name, artifact_location=location)
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.set_experiment(name).experiment_id


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str) -> None:
        check_tracking_uri(tracking_uri)  # a dead server: one line within seconds, not minutes of retries
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.experiment_id = ensure_experiment(tracking_uri, experiment)
        self.parent_run_id: str | None = None
        self._logged_upto: dict[str, int] = {}  # metric -> last step already in a resumed stage run

    @contextlib.contextmanager
    def parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str],
               nested: bool = False, run_id: str | None = None) -> Iterator[str]:
        """The run that holds the stage runs; ``nested`` for a sweep point under the sweep's run;
        ``run_id`` re-opens the parent of an interrupted run (resume)."""
        with mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags, nested=nested) as run:
            self.parent_run_id = run.info.run_id
            mlflow.log_params({k: _param_value(v) for k, v in params.items()})
            yield run.info.run_id

    @contextlib.contextmanager
    def stage(self, name: str, tags: dict[str, str] | None = None, run_id: str | None = None) -> Iterator[str]:
        """A nested stage run; ``run_id`` re-opens an interrupted one, whose already-logged metric steps
        are then not logged again (a resumed stage replays the steps since its last checkpoint)."""
        self._logged_upto = _logged_steps(run_id) if run_id else {}
        try:
            with mlflow.start_run(run_id=run_id, run_name=name, nested=True,
                                  tags={"stage": name, **(tags or {})}) as run:
                yield run.info.run_id
        finally:
            self._logged_upto = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None
                 and (step or 0) > self._logged_upto.get(k, -1)}
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


def _logged_steps(run_id: str) -> dict[str, int]:
    """The highest step logged so far for each metric of ``run_id``."""
    client = mlflow.MlflowClient()
    return {key: max(m.step for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."

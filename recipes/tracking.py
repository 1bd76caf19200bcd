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

from recipes.locks import hold
from recipes.preflight import check_tracking_uri

MAX_PARAM_CHARS = 500  # MLflow's limit on a param value
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
"""The value MLflow 3's UI reads as "Model training" (its ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT``): the
experiment page then opens on the runs table, not on the GenAI traces overview it guesses for an untagged one."""
GUESSED_KINDS = ("", "no_inferred_type", "genai_development_inferred", "custom_model_development_inferred")
"""Values the UI writes when it guessed: replaced by ours; a kind someone chose by hand is kept."""
_PREPARED: set[str] = set()  # store URIs whose schema this process has made sure of


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


def prepare_store(tracking_uri: str) -> None:
    """Create a local SQLite store's schema under a lock beside the file (``mlflow.db.lock``).

    MLflow creates a new store's tables with unlocked migrations, so two processes opening one new
    ``mlflow.db`` at once crash (``table ... already exists``, alembic ``expected to match one row``).
    The first process here creates the schema while later ones wait on the lock, then find it made.
    Servers and other databases are left to their own server."""
    if tracking_uri in _PREPARED or not tracking_uri.startswith("sqlite:///"):
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with hold(db.with_name(db.name + ".lock"), f"the MLflow store {db} being created", quiet=True):
        client = mlflow.MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)  # the tracking store: creates every table
        client.search_registered_models(max_results=1)  # the registry store checks them too
    _PREPARED.add(tracking_uri)


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, creating it (with artifacts beside a local store) and making it active; it is
    tagged as a model-training experiment (``MODEL_TRAINING_KIND``) so the UI opens on its runs."""
    prepare_store(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(name) is None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # created meanwhile by another process
            client.create_experiment(name, artifact_location=local_artifact_location(tracking_uri),
                                     tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    experiment = client.get_experiment_by_name(name)
    if experiment is None:  # deleted meanwhile: let MLflow say so
        raise mlflow.exceptions.MlflowException(f"experiment {name!r} vanished from {tracking_uri}")
    if experiment.tags.get(EXPERIMENT_KIND_TAG, "") in GUESSED_KINDS:  # made by an older ispdc, or by hand
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.set_experiment(experiment_id=experiment.experiment_id).experiment_id


UI_VIEW_PARAM = "workflowType=machine_learning"
"""MLflow 3.17's UI picks GenAI or "Model training" from this URL parameter (else from the browser's last
choice, GenAI by default), not from ``mlflow.experimentKind``: the links ispdc prints carry it."""


def experiment_ui_url(ui: str, experiment_id: str, chart: bool = False) -> str:
    """The runs table (``chart``: the chart view) of an experiment in the MLflow UI at ``ui``."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_VIEW_PARAM}" + ("&compareRunsMode=CHART" * chart)


def ui_hint(tracking_uri: str, run_id: str) -> list[str]:
    """How to open the UI on the runs of ``run_id``'s experiment: the ``mlflow ui`` command for a local
    store (default port 5000), then the address of the runs table."""
    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    if tracking_uri.startswith(("http://", "https://")):
        return [f"open the UI at  : {experiment_ui_url(tracking_uri, experiment_id)}"]
    return [f"open the UI with: .venv/bin/mlflow ui --backend-store-uri {tracking_uri}",
            f"  then          : {experiment_ui_url('http://127.0.0.1:5000', experiment_id)}"]


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
               nested: bool = False, run_id: str | None = None, parent_run_id: str | None = None) -> Iterator[str]:
        """The run that holds the stage runs; ``nested`` for a sweep point under the active run,
        ``parent_run_id`` for one under a sweep run this process did not open; ``run_id`` re-opens the
        parent of an interrupted run (resume)."""
        with mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags, nested=nested,
                              parent_run_id=None if run_id else parent_run_id) as run:
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


def create_run(tracking_uri: str, experiment_id: str, run_name: str, params: dict[str, Any],
               tags: dict[str, str]) -> str:
    """A run no process enters (``RUNNING`` until ``end_run``): a fanned-out sweep's parent, which point
    runs in other processes nest under (``Tracker.parent(parent_run_id=...)``)."""
    from mlflow.entities import Param

    client = mlflow.MlflowClient(tracking_uri)
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])
    return run_id


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    mlflow.MlflowClient(tracking_uri).set_terminated(run_id, status)


def log_artifact_to(tracking_uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Log a file on a run that is not the active one."""
    mlflow.MlflowClient(tracking_uri).log_artifact(run_id, str(path), artifact_path=artifact_path)


def _logged_steps(run_id: str) -> dict[str, int]:
    """The highest step logged so far for each metric of ``run_id``."""
    client = mlflow.MlflowClient()
    return {key: max(m.step for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."

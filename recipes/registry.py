"""Hand-off bundles in the MLflow model registry: register, alias, and rebuild a bundle from it.

A bundle is registered as a pyfunc model version (``recipes/bundle_pyfunc.py``) whose artifacts are the
whole bundle folder; the version's description is the bundle README (made from the model card) and its
tags are the card's fields plus ``bundle_sha256``, a digest of every file.  ``fetch_bundle`` downloads
the version, checks the digest (byte-identical) and runs the bundle's golden check before placing it.
The registry needs a database store (``sqlite:///...``) or a tracking server, not a plain folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from compress.bundle.write import BUNDLE_FILES
from recipes.schema import flatten
from recipes.tracking import ensure_experiment

PYFUNC_SOURCE = Path(__file__).with_name("bundle_pyfunc.py")
REGISTRY_EXPERIMENT = "ispdc-registry"
MODEL_ARTIFACT = "bundle_model"
DIGEST_TAG = "bundle_sha256"
PIP_REQUIREMENTS = ["mlflow==3.17.2", "numpy", "ai-edge-litert==2.3.0"]
MAX_TAG_CHARS = 5000
_REF = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z_][A-Za-z0-9_-]*)|/(?P<version>\d+))?$")


class RegistryError(ValueError):
    """A bundle or model reference that cannot be used: one line naming what and why."""


def bundle_manifest(bundle: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file in the bundle."""
    bundle = Path(bundle)
    return {p.relative_to(bundle).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def bundle_digest(bundle: Path) -> str:
    return hashlib.sha256(json.dumps(bundle_manifest(bundle), sort_keys=True).encode()).hexdigest()


def _check_bundle(bundle: Path) -> dict[str, Any]:
    if not bundle.is_dir():
        raise RegistryError(f"{bundle}: no such bundle folder")
    missing = [f for f in BUNDLE_FILES if not (bundle / f).is_file()]
    if missing:
        raise RegistryError(f"{bundle}: not a hand-off bundle (missing {', '.join(missing)})")
    try:
        return json.loads((bundle / "model_card.json").read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{bundle}/model_card.json: not valid JSON ({exc.msg})") from None


def card_tags(card: dict[str, Any]) -> dict[str, str]:
    """The model card flattened to ``card.<key.path>`` tags (lists as JSON), for search and the UI."""
    tags = {}
    for key, value in flatten(card).items():
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        tags[f"card.{key}"] = text[:MAX_TAG_CHARS]
    return tags


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS``, ``NAME/VERSION`` or ``NAME`` (the newest version) -> (name, alias, version)."""
    match = _REF.match(ref)
    if not match:
        raise RegistryError(f"{ref!r} is not a model reference: use NAME@ALIAS (e.g. isp@approved), NAME/VERSION "
                            "or NAME")
    return match["name"], match["alias"], match["version"]


def _client(tracking_uri: str | None):  # noqa: ANN202  (MlflowClient)
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    if not (uri.startswith(("sqlite:", "postgresql", "mysql", "mssql", "http:", "https:", "databricks"))):
        raise RegistryError(f"the model registry needs a database store or a server; {uri!r} is neither "
                            "(use e.g. sqlite:///runs/mlflow.db or http://127.0.0.1:5000)")
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


def register_bundle(bundle: Path, name: str, alias: str | None = None, tracking_uri: str | None = None) -> Any:
    """Log the bundle as a pyfunc model and register it as a new version of ``name``; returns the
    ``ModelVersion``.  Logged into the active run (the recipe's, when called by a run), else into a new
    run of the ``ispdc-registry`` experiment that links the bundle's source run (tag ``source_run``)."""
    import mlflow

    bundle = Path(bundle).resolve()
    card = _check_bundle(bundle)
    client = _client(tracking_uri)
    digest = bundle_digest(bundle)
    source_run = str(card.get("provenance", {}).get("mlflow_run_id") or "")
    if mlflow.active_run() is not None:
        context: Any = contextlib.nullcontext()
    else:
        experiment_id = ensure_experiment(mlflow.get_tracking_uri(), REGISTRY_EXPERIMENT)
        context = mlflow.start_run(experiment_id=experiment_id, run_name=f"register {name}",
                                   tags={"source_run": source_run, "run_kind": "registration"})
    with context:
        info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, python_model=str(PYFUNC_SOURCE),
                                       artifacts={"bundle": str(bundle)}, pip_requirements=PIP_REQUIREMENTS,
                                       registered_model_name=name)
    version = str(info.registered_model_version)
    readme = (bundle / "README.md").read_text()
    client.update_model_version(name, version, description=readme)
    for key, value in {**card_tags(card), DIGEST_TAG: digest, "source_run": source_run}.items():
        client.set_model_version_tag(name, version, key, value)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=f"ispdc hand-off bundles: {card.get('description', '')}")
    if alias:
        set_alias(name, version, alias, tracking_uri)
    return client.get_model_version(name, version)


def set_alias(name: str, version: str | int, alias: str, tracking_uri: str | None = None) -> None:
    """Point ``alias`` (e.g. ``candidate``, ``approved``) at ``version`` of ``name``."""
    from mlflow.exceptions import MlflowException

    if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", alias) or alias == "latest":
        raise RegistryError(f"alias {alias!r}: use letters, digits, _ and -, not starting with a digit, not 'latest'")
    client = _client(tracking_uri)
    try:
        client.get_model_version(name, str(version))
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} version {version}: {exc.message.splitlines()[0]}") from None


def resolve_version(ref: str, tracking_uri: str | None = None) -> Any:
    """The ``ModelVersion`` a reference names."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_ref(ref)
    client = _client(tracking_uri)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise RegistryError(f"{ref}: {exc.message.splitlines()[0]}") from None
    if not versions:
        raise RegistryError(f"{ref}: no registered model of that name")
    return max(versions, key=lambda v: int(v.version))


def golden_check(bundle: Path) -> str:
    """Run the bundle's own ``run_model.py`` golden check; returns its output, raises if it fails."""
    done = subprocess.run([sys.executable, "run_model.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RegistryError(f"{bundle}: golden check failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
    return done.stdout.strip()


def fetch_bundle(ref: str, dest: Path, tracking_uri: str | None = None) -> tuple[Path, str]:
    """Rebuild the bundle a registered version holds in ``dest`` (which must not exist or be empty):
    byte-identical to the registered one (checked by digest) and passing its golden check.  Returns
    the folder and the golden check's report."""
    import mlflow

    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RegistryError(f"{dest}: exists and is not an empty folder")
    mv = resolve_version(ref, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="ispdc-registry-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=tmp))
        cards = sorted(local.rglob("model_card.json"))
        if not cards:
            raise RegistryError(f"{ref}: version {mv.version} holds no hand-off bundle")
        source = cards[0].parent
        expected = mv.tags.get(DIGEST_TAG)
        if expected and bundle_digest(source) != expected:
            raise RegistryError(f"{ref}: downloaded bundle does not match its registered digest {expected[:12]}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            report = golden_check(staging)
            shutil.rmtree(staging / "__pycache__", ignore_errors=True)
            if dest.exists():
                dest.rmdir()
            staging.rename(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return dest, report

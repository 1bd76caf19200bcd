"""``teacher.checkpoint``: start from a pre-trained teacher instead of training one.

Accepted: a folder written by ``compress.checkpoint.save_model`` (``model.json`` + ``model.pt``), or a
``.pt`` file holding a plain ``state_dict`` of the recipe's ``teacher.model`` / ``teacher.config``.
Weights are read with ``weights_only=True``.  The check runs when the recipe is validated, so a checkpoint
of the wrong architecture is reported (file and first mismatching key or shape) before anything trains.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from compress.checkpoint import (
    SPEC_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    ModelSpec,
    build_model,
    load_weights,
    state_mismatch,
)


def checkpoint_spec(path: Path, model: str, config: dict[str, Any]) -> tuple[ModelSpec, Path]:
    """The architecture to build and the weights file, checked against the recipe's model and config."""
    path = Path(path)
    if path.is_dir():
        spec_path, weights = path / SPEC_FILE, path / WEIGHTS_FILE
        if not spec_path.is_file() or not weights.is_file():
            raise CheckpointError(f"{path}: a checkpoint folder needs {SPEC_FILE} and {WEIGHTS_FILE} "
                                  "(as written by a stage's model/ folder)")
        try:
            spec = ModelSpec.model_validate(json.loads(spec_path.read_text()))
        except (ValueError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise CheckpointError(f"{spec_path}: not a model spec ({first})") from None
        if spec.family != "teacher" or spec.name != model:
            raise CheckpointError(f"{spec_path}: holds {spec.family} {spec.name!r}, but teacher.model is {model!r}")
        if spec.config != config:
            raise CheckpointError(f"{spec_path}: was saved with config {spec.config}, but teacher.config is "
                                  f"{config}; set teacher.config to match")
        return spec, weights
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    return ModelSpec(family="teacher", name=model, config=config), path


def _build(spec: ModelSpec, on_meta: bool) -> nn.Module:
    if on_meta and not spec.widths and not spec.folded:  # shapes only: no memory, no init cost
        with torch.device("meta"):
            return build_model(spec)
    return build_model(spec)


def check_teacher_checkpoint(path: Path, model: str, config: dict[str, Any]) -> None:
    """Raise ``CheckpointError`` naming the file and the first mismatch unless the weights fit."""
    spec, weights = checkpoint_spec(path, model, config)
    mismatch = state_mismatch(_build(spec, on_meta=True), load_weights(weights))
    if mismatch:
        raise CheckpointError(f"{weights}: not a checkpoint of teacher {model!r} with config {config}: {mismatch}")


def load_teacher_checkpoint(path: Path, model: str, config: dict[str, Any]) -> tuple[nn.Module, ModelSpec]:
    """The pre-trained teacher, in eval mode, and the spec to save it under."""
    spec, weights = checkpoint_spec(path, model, config)
    module = _build(spec, on_meta=False)
    state = load_weights(weights)
    mismatch = state_mismatch(module, state)
    if mismatch:
        raise CheckpointError(f"{weights}: not a checkpoint of teacher {model!r} with config {config}: {mismatch}")
    module.load_state_dict(state, strict=True)
    return module.eval(), spec


def checkpoint_digest(path: Path) -> str:
    """Content hash of the checkpoint's files (the stage cache key: a replaced file is a new teacher)."""
    path = Path(path)
    files = [path / SPEC_FILE, path / WEIGHTS_FILE] if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]

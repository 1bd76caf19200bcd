"""Training checkpoints that survive ``kill -9``: written atomically, read back with ``weights_only=True``.

A checkpoint holds everything a step-based run needs to continue exactly where it stopped: model,
optimiser, scheduler (and AMP scaler, KD adapters), the number of finished steps and the RNG states of
torch, numpy and Python.  Everything is stored as tensors or primitive containers, so loading never
unpickles arbitrary objects (RNG states become integer tensors; the MLflow run id goes into ``extra``
as a string).  The data stream needs no state: it is a pure function of (seed, step).
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.atomic import atomic_torch_save

CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / torch.compile wrappers (what a checkpoint holds)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def capture_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors and primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states`."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    rng_states: dict[str, Any],
    extra: dict[str, Any] | None = None,
    adapters: nn.Module | None = None,
    scaler: Any = None,
) -> Path:
    """Write the checkpoint atomically: a temp file in the same folder, fsync, then ``os.replace``.

    A kill at any moment leaves either the previous checkpoint or the new one, never a torn file.
    ``step`` is the number of optimiser steps already taken.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimiser": optimiser.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "step": int(step),
        "rng_states": rng_states,
        "extra": dict(extra or {}),
    }
    if adapters is not None:
        payload["adapters"] = adapters.state_dict()
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    return atomic_torch_save(payload, path)  # temp sibling + fsync + os.replace; OSError names the file


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (tensors and primitive containers only).

    Returns a dict with ``model``, ``optimiser``, ``scheduler``, ``step``, ``rng_states``, ``extra`` and,
    where saved, ``adapters`` and ``scaler``.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as exc:  # noqa: BLE001  (unpickling errors come in many types)
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or "model" not in payload or "step" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint (no model state or step)")
    return payload

"""Training checkpoints that survive ``kill -9``: written atomically, read back with ``weights_only=True``.

A checkpoint holds everything a step-based run needs to continue exactly where it stopped: model,
optimiser, scheduler (and AMP scaler, KD adapters, the once-for-all super head), the number of finished
steps and the RNG states of torch, numpy and Python.  Everything is stored as tensors or primitive
containers, so loading never unpickles arbitrary objects (RNG states become integer tensors; the MLflow
run id goes into ``extra`` as a string).  The data stream needs no state: it is a pure function of (seed, step).
"""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.atomic import atomic_torch_save

CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used: unreadable, not plain tensors, or not this model."""


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``state_dict`` read with ``weights_only=True``: a pickle that would run code is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        noise = ("Weights only load failed", "Check the documentation", "Please file an issue")
        reason = next((ln for ln in lines if not ln.startswith(noise)), type(exc).__name__)
        raise CheckpointError(f"{path}: refused: not a plain tensor checkpoint ({reason[:200]}); "
                              "checkpoints are loaded with weights_only=True and never run code") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (parameter name -> tensor); got {type(state).__name__}")
    return state


def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The first difference between ``model``'s parameters and ``state`` (a missing, unexpected or
    differently shaped key), in words; None when the weights fit."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            return f"missing key {key!r} (shape {list(tensor.shape)})"
        if tuple(state[key].shape) != tuple(tensor.shape):
            return f"key {key!r} has shape {list(state[key].shape)} in the file; the model expects {list(tensor.shape)}"
    extra = [key for key in state if key not in expected]
    return f"unexpected key {extra[0]!r} (the model has no such parameter)" if extra else None


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
    once_for_all: dict[str, Any] | None = None,
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
    if once_for_all is not None:
        payload["once_for_all"] = once_for_all  # OnceForAll.state_dict(): head weights, PSNR average, detach step
    return atomic_torch_save(payload, path)  # temp sibling + fsync + os.replace; OSError names the file


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (tensors and primitive containers only).

    Returns a dict with ``model``, ``optimiser``, ``scheduler``, ``step``, ``rng_states``, ``extra`` and,
    where saved, ``adapters``, ``scaler`` and ``once_for_all``.
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

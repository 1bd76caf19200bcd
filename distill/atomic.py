"""Atomic file writes that fail with a plain ``OSError`` naming the file.

A write goes to a temporary sibling and is renamed over the target only once it is complete, so a full
disk or a crash never leaves a half-written model, ``done.json`` or bundle where a good one was.
``torch.save`` straight to a full disk raises a cryptic ``RuntimeError`` ("unexpected pos ..."):
checkpoints are therefore serialised in memory first and written like any other bytes.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via ``<path>.tmp`` + rename; an ``OSError`` names ``path`` and leaves it as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); best effort where a folder cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` that is atomic and reports a full disk as ``OSError(ENOSPC, ..., path)``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())

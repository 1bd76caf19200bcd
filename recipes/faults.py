"""Faults of the environment or the inputs that a run reports as one line and exit code 2.

The CLI asks :func:`bad_input_message` about any exception a run raised: a known fault (a full disk, a
dead tracking server, an unusable checkpoint, a loss that went NaN/Inf) becomes one line naming the
file, URI or step; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
from pathlib import Path

from distill.checkpointing import CheckpointError
from recipes.preflight import TrackingUnreachable

WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for the filesystem", errno.EROFS: "read-only filesystem",
                errno.EACCES: "permission denied"}
KEPT = "finished stages (their done.json and outputs) and any earlier bundle are unchanged"


def _one_line(text: object) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def bad_input_message(exc: BaseException, recipe_path: Path) -> str | None:
    """One line for a fault the user can fix, or None for an unexpected error (a bug: keep the traceback)."""
    if isinstance(exc, TrackingUnreachable):
        return _one_line(exc)
    if isinstance(exc, CheckpointError):
        return _one_line(exc)
    if isinstance(exc, FloatingPointError):
        return _one_line(f"{recipe_path}: {exc}; stopped before that step was applied: the last checkpoint and "
                         f"{KEPT}; lower the learning rate or check the data")
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        where = exc.filename or "the work folder"
        space = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = "; free some space and re-run (finished stages are reused)" if space else ""
        return _one_line(f"{where}: cannot write: {WRITE_ERRNOS[exc.errno]}; {KEPT}{hint}")
    return None

"""File locks for runs that share a workdir or a store: who holds what, and one line when a run must wait.

A lock is an ``flock`` on a file (``filelock``), so the kernel frees it when its holder dies, even by
``kill -9``: a lock never outlives its process and a killed run never blocks the next.  Beside each lock
``<lock>.owner`` says who took it last (pid, host, time), so a waiting run can name what it waits for.
``flock`` works across machines on NFSv4 and most cluster file systems; on a file system without it
``filelock`` falls back to its own soft lock.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_DIR = ".locks"
"""``<workdir>/.locks/``: the stage and run locks of a workdir."""


def say(line: str) -> None:
    """Where a waiting run's line goes: stdout, beside the stage progress lines."""
    print(line, file=sys.stdout, flush=True)


def owner_of(lock: Path) -> str:
    """``pid 123 on host n1 since 04:31:07 UTC`` from the lock's owner note, or '' when there is none."""
    try:
        return (Path(f"{lock}.owner")).read_text().strip()
    except OSError:
        return ""


def _note_owner(lock: Path) -> None:
    stamp = time.strftime("%H:%M:%S UTC", time.gmtime())
    with contextlib.suppress(OSError):  # informative only (a torn note is harmless): plain write, no torch import
        Path(f"{lock}.owner").write_text(f"pid {os.getpid()} on host {socket.gethostname()} since {stamp}")


@contextlib.contextmanager
def _held(lock: Path, before_waiting: Callable[[], None] | None) -> Iterator[bool]:
    """Take ``lock`` at once, or (``before_waiting`` given) call it and wait; without it, yield False at once."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(lock)
    try:
        file_lock.acquire(timeout=0)
    except Timeout:
        if before_waiting is None:
            yield False
            return
        before_waiting()
        file_lock.acquire()
    try:
        _note_owner(lock)
        yield True
    finally:
        file_lock.release()


@contextlib.contextmanager
def hold(lock: Path, what: str, quiet: bool = False, on_wait: Callable[[str], None] = say) -> Iterator[None]:
    """Hold ``lock`` for the block; if another process holds it, print one line (``waiting for <what>
    (held by pid ... on host ...)``, unless ``quiet``) and wait for it."""
    lock = Path(lock)

    def announce() -> None:
        if not quiet:
            holder = owner_of(lock)
            on_wait(f"waiting for {what}" + (f" (held by {holder})" if holder else ""))

    with _held(lock, announce):
        yield


def try_hold(lock: Path) -> contextlib.AbstractContextManager[bool]:
    """Hold ``lock`` for the block if it is free (yields True); yields False at once when another
    process holds it (a sweep point another process is running)."""
    return _held(Path(lock), None)

"""Progress bars that read well in a log: a live bar on a terminal, one plain line every N seconds elsewhere.

tqdm redraws its bar with carriage returns ten times a second; in a file (a Slurm log, ``> run.log``, CI)
that is thousands of redraws on one "line" (a quickstart log was 255 KB of them).  ``tqdm`` here is a
drop-in subclass: on a terminal it is tqdm; when its output is not a terminal it writes the bar as a
whole line when it starts, at most every ``ISPDC_PROGRESS_SECONDS`` (default 30) and when it ends, and
never a carriage return.  Every bar of the project is made through it.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any

from tqdm.std import tqdm as _tqdm

PROGRESS_SECONDS_ENV = "ISPDC_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 30.0


def log_interval() -> float:
    """Seconds between two progress lines when output is not a terminal (``ISPDC_PROGRESS_SECONDS``)."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_SECONDS_ENV, DEFAULT_PROGRESS_SECONDS)))
    except ValueError:
        return DEFAULT_PROGRESS_SECONDS


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


class tqdm(_tqdm):  # spelled like tqdm.tqdm: a drop-in
    """``tqdm.tqdm`` whose output, when not a terminal, is whole lines at most every ``log_interval()`` s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        self._as_lines = not is_terminal(stream)
        if self._as_lines:
            kwargs["mininterval"] = max(float(kwargs.get("mininterval") or 0.0), log_interval())
            kwargs["dynamic_ncols"] = False
            kwargs.setdefault("ncols", 100)
            kwargs.setdefault("ascii", True)  # a log file is not always read as UTF-8
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not getattr(self, "_as_lines", False):
            return bool(super().display(msg, pos))
        if msg == "":  # tqdm asks to erase the bar: a log keeps its lines, and writes no "\r"
            return False
        now = self._time()
        if now - getattr(self, "_line_at", -math.inf) >= log_interval():  # set_postfix() refreshes at once
            self._write_line(msg)
            self._line_at = now
        return True

    def _write_line(self, msg: str | None = None) -> None:
        self.fp.write((msg if msg is not None else str(self)).strip() + "\n")
        self.fp.flush()
        self._shown_n = self.n

    def clear(self, nolock: bool = False) -> None:
        if not getattr(self, "_as_lines", False):
            super().clear(nolock)

    def close(self) -> None:
        if getattr(self, "_as_lines", False) and not self.disable:
            if getattr(self, "_shown_n", None) != self.n:  # the end, once, whatever ``leave`` says
                self._write_line()
            self.leave = False
        super().close()

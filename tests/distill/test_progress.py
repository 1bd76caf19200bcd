"""distill.progress: a live bar on a terminal, whole lines at most every N seconds in a log."""
from __future__ import annotations

import io

import pytest

from distill.progress import PROGRESS_SECONDS_ENV, tqdm


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(stream: io.StringIO, steps: int = 500, leave: bool = False) -> str:
    bar = tqdm(range(steps), desc="student", file=stream, leave=leave, mininterval=0)
    for step in bar:
        bar.set_postfix(loss=step / steps)  # refreshes the bar at once on every call
    return stream.getvalue()


@pytest.mark.parametrize("leave", [False, True])
def test_a_log_gets_a_first_and_a_last_line_and_no_carriage_return(monkeypatch: pytest.MonkeyPatch,
                                                                    leave: bool) -> None:
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "3600")
    text = _drive(io.StringIO(), leave=leave)
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("student:   0%") and lines[1].startswith("student: 100%")
    assert "500/500" in lines[1] and "loss=0.998" in lines[1]


def test_a_short_interval_gives_more_lines_still_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    text = _drive(io.StringIO(), steps=20)
    assert "\r" not in text and text.endswith("\n")
    assert len(text.splitlines()) > 20  # every refresh is a line of its own


def test_a_terminal_gets_tqdms_live_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "3600")
    text = _drive(Terminal(), steps=20)
    assert "\r" in text  # redrawn in place, as tqdm does


def test_a_disabled_bar_writes_nothing() -> None:
    stream = io.StringIO()
    bar = tqdm(range(5), file=stream, disable=True)
    assert list(bar) == list(range(5))
    bar.close()
    assert stream.getvalue() == ""

"""run_state.json: what a killed run leaves, and when it is (not) resumed."""
from __future__ import annotations

from pathlib import Path

import pytest

from recipes.run_state import STATE_FILE, RunState, clear_checkpoints, run_exists


def _killed_in_student(workdir: Path) -> RunState:
    state = RunState.open(workdir, "hash1", "sqlite:///x.db")
    state.start_parent("parent1")
    state.start_stage("teacher", "k1", "run-t")
    state.finish_stage("teacher", 3.5)
    state.start_stage("student", "k2", "run-s")
    return state


def test_an_interrupted_run_is_resumed_stage_by_stage(tmp_path: Path) -> None:
    _killed_in_student(tmp_path)
    (tmp_path / "done.json").write_text("{}")
    state = RunState.open(tmp_path, "hash1", "sqlite:///x.db")
    assert state.resumed and state.parent_run_id == "parent1"
    assert state.finished("teacher", "k1", tmp_path / "done.json")["seconds"] == 3.5
    assert state.finished("teacher", "other-key", tmp_path / "done.json") is None  # config changed: rerun
    assert state.finished("teacher", "k1", tmp_path / "missing.json") is None  # its outputs are gone
    assert state.interrupted_run("student", "k2") == "run-s"
    assert state.interrupted_run("student", "k3") is None
    state.clear()
    assert not (tmp_path / STATE_FILE).exists()


@pytest.mark.parametrize("kwargs", [{"recipe_hash": "hash2"}, {"tracking_uri": "sqlite:///y.db"}, {"resume": False}])
def test_another_recipe_store_or_no_resume_starts_fresh(tmp_path: Path, kwargs: dict) -> None:
    _killed_in_student(tmp_path)
    args = {"recipe_hash": "hash1", "tracking_uri": "sqlite:///x.db", **kwargs}
    state = RunState.open(tmp_path, **args)
    assert not state.resumed and state.interrupted_run("student", "k2") is None


def test_a_corrupt_state_file_warns_and_starts_fresh(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{ not json")
    with pytest.warns(UserWarning, match="unreadable"):
        assert not RunState.open(tmp_path, "hash1", "sqlite:///x.db").resumed


def test_a_follower_never_writes(tmp_path: Path) -> None:
    state = RunState.open(tmp_path, "hash1", "sqlite:///x.db", writable=False)
    state.start_parent("p")
    assert not (tmp_path / STATE_FILE).exists()


def test_a_deleted_store_run_is_not_resumed_and_stale_checkpoints_go(tmp_path: Path) -> None:
    assert not run_exists(f"sqlite:///{tmp_path / 'mlflow.db'}", "0" * 32)
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "checkpoint-round1.pt").write_bytes(b"x")
    (tmp_path / "model.pt").write_bytes(b"x")
    clear_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "model.pt"]

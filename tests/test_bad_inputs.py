"""The bad-input suite: every fault a user can cause is one line naming the file, key, URI or step on
stderr, exit code 2, no traceback, and nothing already written is damaged.

Everything goes through the real CLI in-process (``recipes.cli.main``); faults of the environment (a
full disk, a loss that goes NaN) are injected by monkeypatching the lowest layer that can fail.
"""
from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from recipes.cli import main

TINY = """\
name: {name}
run_until: {run_until}
data: {data}
student: {{model: smallnet, config: {{width: 4}}, train: {{steps: {steps}, batch_size: 2, log_every: 1}}}}
export: {{input_size: [16, 16]}}
"""
EMBEDDED = "{max_side: 128, patch_size: 16, patches_per_image: 2, max_eval_images: 1}"
PAIRED = "{kind: paired, root: data, patch_size: 8, patches_per_image: 2}"  # relative: next to the recipe


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="session")
def tracking_uri(store: Path) -> str:
    """One SQLite store for the whole suite: its schema is created once, not per run."""
    return f"sqlite:///{store / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _run_elsewhere(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow puts a SQLite store's artifacts in ./mlruns: keep them out of the repository."""
    monkeypatch.chdir(store)


def tiny_recipe(folder: Path, *, name: str = "tiny", data: str = EMBEDDED, run_until: str = "student",
                steps: int = 2, extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(TINY.format(name=name, data=data, run_until=run_until, steps=steps) + extra)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_bad_input(code: int, err: str, *needles: str) -> str:
    """Exit 2, exactly one error line, no traceback, and the line names what it must."""
    lines = [line for line in err.splitlines() if line.startswith("ispdc: error:")]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- recipes (validate)


def _teacher_state(config: dict[str, Any], name: str = "punet") -> dict[str, torch.Tensor]:
    from teachers import create_teacher

    return create_teacher(name, **config).state_dict()


class PickleBomb:
    """Runs ``touch <marker>`` if it is ever unpickled with full pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _wrong_arch_checkpoint(tmp: Path) -> Path:
    path = tmp / "teacher_w8.pt"
    torch.save(_teacher_state({"base_width": 8}), path)
    return path


def _bomb_checkpoint(tmp: Path) -> Path:
    path = tmp / "bomb.pt"
    torch.save({"weight": torch.zeros(1), "payload": PickleBomb(tmp / "PWNED")}, path)
    return path


def _other_model_folder(tmp: Path) -> Path:
    from compress.checkpoint import ModelSpec, build_model, save_model

    spec = ModelSpec(family="teacher", name="smallnet_clean", config={"width": 8})
    return save_model(build_model(spec), spec, tmp / "clean_teacher")


VALIDATE_CASES: dict[str, tuple[str, Callable[[Path], Any] | None, tuple[str, ...]]] = {
    # name: (recipe text, a file to create first (its path is {arg} in the text), what the line names)
    "malformed_yaml": ("name: r\nstudent:\n\tmodel: smallnet\n", None, ("{recipe}:3:", "malformed YAML")),
    "python_tag": ("name: !!python/object/apply:os.system ['touch {tmp}/PWNED']\n", None,
                   ("{recipe}:1:", "python/object/apply:os.system")),
    "unknown_top_key": ("name: r\nstudnet: {{model: smallnet}}\n", None, ("studnet: unknown key", "'student'")),
    "unknown_nested_key": ("name: r\ndata: {{patch_sise: 16}}\n", None, ("data.patch_sise: unknown key",)),
    "wrong_type": ("name: r\ndata: {{patch_size: big}}\n", None, ("data.patch_size", "integer")),
    "wrong_type_list": ("name: r\nexport: {{input_size: 64}}\n", None, ("export.input_size",)),
    "negative_patch": ("name: r\ndata: {{patch_size: -16}}\n", None, ("data.patch_size", "greater than or equal")),
    "negative_batch": ("name: r\nstudent: {{train: {{batch_size: -2}}}}\n", None, ("student.train.batch_size",)),
    "negative_steps": ("name: r\nstudent: {{train: {{steps: -1}}}}\n", None, ("student.train.steps",)),
    "negative_input_size": ("name: r\nexport: {{input_size: [-16, 16]}}\n", None, ("export.input_size", "too small")),
    "unknown_student": ("name: r\nstudent: {{model: nosuchnet}}\n", None,
                        ("student.model", "unknown student 'nosuchnet'")),
    "unknown_teacher": ("name: r\nteacher: {{model: resnet9000}}\n", None, ("teacher.model", "resnet9000")),
    "unknown_train_loss": ("name: r\nstudent: {{train: {{losses: {{l3: 1.0}}}}}}\n", None,
                           ("student.train.losses", "unknown loss 'l3'")),
    "unknown_kd_loss": ("name: r\nstudent: {{distill: {{loss: huber9}}}}\n", None,
                        ("student.distill.loss", "unknown loss 'huber9'")),
    "missing_data_folder": ("name: r\ndata: {{kind: paired, root: no_such_folder}}\n", None,
                            ("data.root", "{tmp}/no_such_folder", "does not exist")),
    "teacher_ckpt_missing": ("name: r\nteacher: {{model: punet, checkpoint: gone.pt}}\n", None,
                             ("teacher.checkpoint", "{tmp}/gone.pt", "no such checkpoint")),
    "teacher_ckpt_wrong_arch": ("name: r\nteacher: {{model: punet, config: {{base_width: 4}}, checkpoint: {arg}}}\n",
                                _wrong_arch_checkpoint,
                                ("teacher.checkpoint", "teacher_w8.pt", "has shape [8, 4, 3, 3] in the file",
                                 "expects [4, 4, 3, 3]")),
    "teacher_ckpt_other_model": ("name: r\nteacher: {{model: punet, checkpoint: {arg}}}\n", _other_model_folder,
                                 ("teacher.checkpoint", "clean_teacher/model.json", "'smallnet_clean'",
                                  "teacher.model is 'punet'")),
    "teacher_ckpt_pickle_bomb": ("name: r\nteacher: {{model: punet, checkpoint: {arg}}}\n", _bomb_checkpoint,
                                 ("teacher.checkpoint", "bomb.pt", "refused", "posix.system")),
}


@pytest.mark.parametrize("case", sorted(VALIDATE_CASES))
def test_bad_recipe_is_one_line_and_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, make, needles = VALIDATE_CASES[case]
    arg = make(tmp_path) if make else None
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.format(tmp=tmp_path, arg=arg))
    code, err = cli(capsys, "validate", str(recipe))
    assert_bad_input(code, err, *(n.format(recipe=recipe, tmp=tmp_path) for n in needles))
    assert not (tmp_path / "PWNED").exists(), "a recipe or checkpoint ran code"


# --------------------------------------------------------------------------- data (run)


def _write_split(root: Path, split: str, n_raw: int = 2, n_rgb: int = 2, raw: Callable[[int], np.ndarray] | None = None,
                 rgb_ext: str = ".png", rgb_side: int = 64) -> None:
    rng = np.random.default_rng(0)
    (root / split / "raw").mkdir(parents=True, exist_ok=True)
    (root / split / "rgb").mkdir(parents=True, exist_ok=True)
    for i in range(n_raw):
        mosaic = raw(i) if raw else rng.integers(0, 1023, (64, 64), dtype=np.uint16)
        iio.imwrite(root / split / "raw" / f"{i}.png", mosaic)
    for i in range(n_rgb):
        iio.imwrite(root / split / "rgb" / f"{i}{rgb_ext}",
                    rng.integers(0, 255, (rgb_side, rgb_side, 3), dtype=np.uint8))


def _empty(root: Path) -> None:
    for split in ("train", "test"):
        (root / split / "raw").mkdir(parents=True)
        (root / split / "rgb").mkdir(parents=True)


def _eight_bit_raw(root: Path) -> None:
    _write_split(root, "train", raw=lambda i: np.full((64, 64), 100, dtype=np.uint8))
    _write_split(root, "test")


def _size_mismatch(root: Path) -> None:
    _write_split(root, "train", rgb_side=48)
    _write_split(root, "test")


def _corrupt_png_raw(root: Path) -> None:
    _write_split(root, "train")
    _write_split(root, "test")
    path = root / "train" / "raw" / "1.png"
    path.write_bytes(path.read_bytes()[:60])  # truncated mid-stream


def _corrupt_jpg_rgb(root: Path) -> None:
    _write_split(root, "train", rgb_ext=".jpg")
    _write_split(root, "test")
    (root / "train" / "rgb" / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")


def _count_mismatch(root: Path) -> None:
    _write_split(root, "train", n_raw=3, n_rgb=2)
    _write_split(root, "test")


def _missing_split(root: Path) -> None:
    _write_split(root, "train")  # no test/ split


DATA_CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "empty_folders": (_empty, ("data:", "{data}/train/raw", "is empty")),
    "raw_8_bit": (_eight_bit_raw, ("{data}/train/raw/0.png", "16-bit")),
    "raw_rgb_size_mismatch": (_size_mismatch, ("0.png", "64x64", "48x48", "2x the packed RAW")),
    "corrupt_png": (_corrupt_png_raw, ("{data}/train/raw/1.png", "cannot read RAW image")),
    "corrupt_jpg": (_corrupt_jpg_rgb, ("{data}/train/rgb/0.jpg", "cannot read RGB image")),
    "pair_count_mismatch": (_count_mismatch, ("3 RAW files", "2 RGB files", "RAW without RGB: 2.png")),
    "missing_split": (_missing_split, ("split 'test'", "{data}/test", "does not exist")),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_is_one_line_and_exit_2(case: str, tmp_path: Path, tracking_uri: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    make, needles = DATA_CASES[case]
    data = tmp_path / "data"
    make(data)
    recipe = tiny_recipe(tmp_path, name=f"data_{case}", data=PAIRED)
    work = tmp_path / "work"
    code, err = cli(capsys, "run", str(recipe), "--workdir", str(work), "--tracking-uri", tracking_uri)
    assert_bad_input(code, err, str(recipe), *(n.format(data=data) for n in needles))
    assert not list(work.glob("stages/*/done.json")) and not (work / "handoff").exists()


# --------------------------------------------------------------------------- environment faults (run)


def test_unreachable_tracking_server_fails_fast_before_training(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    work = tmp_path / "work"
    start = time.perf_counter()
    code, err = cli(capsys, "run", str(tiny_recipe(tmp_path)), "--workdir", str(work), "--tracking-uri", uri)
    seconds = time.perf_counter() - start
    assert_bad_input(code, err, f"tracking server {uri} is unreachable")
    assert seconds < 15, f"took {seconds:.1f} s: MLflow's retries were not bypassed"
    assert not (work / "stages").exists(), "something ran before the tracking server was checked"


def _checkpoint_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, int, str]]:
    """Record (path, step, sha256) of every training checkpoint as it is written."""
    import distill.checkpointing as checkpointing
    import distill.trainer as trainer

    written: list[tuple[Path, int, str]] = []
    original = checkpointing.save_checkpoint

    def recording(path: Path, **kwargs: Any) -> Path:
        out = original(path, **kwargs)
        written.append((Path(path), int(kwargs["step"]), digest(Path(path))))
        return out

    monkeypatch.setattr(trainer, "save_checkpoint", recording)
    return written


def test_nan_loss_names_step_and_term_and_keeps_last_checkpoint(tmp_path: Path, tracking_uri: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from distill import losses
    from distill.checkpointing import load_checkpoint

    calls = {"n": 0}
    l1 = losses.LOSSES["l1"]

    def l1_nan_at_step_4(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1  # one call per training step (no teacher, no KD)
        value = l1(pred, target)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setitem(losses.LOSSES, "l1", l1_nan_at_step_4)
    written = _checkpoint_steps(monkeypatch)
    recipe = tiny_recipe(tmp_path, name="nan", steps=8)
    work = tmp_path / "work"
    code, err = cli(capsys, "run", str(recipe), "--workdir", str(work), "--tracking-uri", tracking_uri,
                    "--set", "student.train.losses={l1: 1.0, mse: 1.0}", "--set", "student.train.checkpoint_every=2")
    line = assert_bad_input(code, err, str(recipe), "student", "at step 4", "non-finite term(s): l1=nan")
    assert "mse=nan" not in line
    assert not list(work.glob("stages/*/done.json"))
    assert [step for _, step, _ in written] == [2, 4], "checkpoints every 2 steps, none at or after the NaN step"
    path, step, sha = written[-1]
    assert path.is_file() and digest(path) == sha, "the last good checkpoint was changed"
    state = load_checkpoint(path)
    assert state["step"] == 4 and torch.isfinite(torch.cat([t.flatten() for t in state["model"].values()])).all()


class FullDisk:
    """Writes under ``folder`` (except into ``spared`` folders) fail with ENOSPC, like a full filesystem."""

    def __init__(self, folder: Path, spared: set[Path]) -> None:
        self.folder, self.spared = folder.resolve(), {p.resolve() for p in spared}
        self.hits: list[str] = []

    def blocked(self, path: str | Path) -> bool:
        real = Path(path).resolve()
        return real.is_relative_to(self.folder) and not any(real.is_relative_to(s) for s in self.spared)

    def wrap(self, handle: Any, path: str | Path) -> Any:
        if not self.blocked(path):
            return handle
        self.hits.append(str(path))
        return _NoSpace(handle)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_fdopen = io.open, os.fdopen

        def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real_open(file, mode, *args, **kwargs)
            writing = isinstance(file, (str, Path)) and any(c in mode for c in "wax+")
            return self.wrap(handle, file) if writing else handle

        def fake_fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real_fdopen(fd, mode, *args, **kwargs)
            writing = any(c in mode for c in "wax+")
            return self.wrap(handle, os.readlink(f"/proc/self/fd/{fd}")) if writing else handle

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(os, "fdopen", fake_fdopen)


class _NoSpace:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _NoSpace:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.close()


def test_full_disk_is_one_line_and_keeps_earlier_outputs(tmp_path: Path, tracking_uri: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_recipe(tmp_path, name="disk")
    work = tmp_path / "work"
    code, err = cli(capsys, "run", str(recipe), "--workdir", str(work), "--tracking-uri", tracking_uri)
    assert code == 0, err
    (done,) = work.glob("stages/student-*/done.json")
    bundle = work / "handoff" / "disk"  # a bundle from an earlier run must survive too
    bundle.mkdir(parents=True)
    (bundle / "model.tflite").write_bytes(b"TFL3 earlier bundle")
    before = tree_digest(work / "stages") | {f"bundle/{k}": v for k, v in tree_digest(bundle).items()}

    # the disk fills up after the first run: every write of a new stage fails
    disk = FullDisk(work / "stages", spared=set((work / "stages").iterdir()))
    disk.install(monkeypatch)
    code, err = cli(capsys, "run", str(recipe), "--workdir", str(work), "--tracking-uri", tracking_uri,
                    "--set", "student.train.steps=3")  # a new student stage: it has to write
    monkeypatch.undo()
    assert disk.hits, "the injected full disk was never hit"
    assert_bad_input(code, err, f"{work}/stages/student-", "cannot write: no space left on device",
                     "free some space and re-run")
    after = tree_digest(work / "stages") | {f"bundle/{k}": v for k, v in tree_digest(bundle).items()}
    assert {k: v for k, v in after.items() if k in before} == before, "an earlier output was changed"
    new = [k for k in after if k not in before]
    assert not any(k.endswith(("done.json", "model.pt", "model.json")) for k in new), new
    assert not list(work.glob("stages/**/*.tmp")), "a temporary file was left behind"


def test_full_disk_while_replacing_a_bundle_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from compress.bundle.write import write_bundle

    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"TFL3 model bytes")
    card = {"name": "b", "description": "d", "quantization": "int8", "input": {}, "output": {}, "quality": {},
            "evaluation": "", "cost": {}, "provenance": {}}
    dest = tmp_path / "handoff" / "b"
    dest.mkdir(parents=True)
    (dest / "model.tflite").write_bytes(b"TFL3 the old bundle")
    before = tree_digest(dest)
    FullDisk(tmp_path / "handoff", spared={dest}).install(monkeypatch)
    with pytest.raises(OSError) as caught:
        write_bundle(dest, tflite, card, np.zeros((1, 2, 2, 4)), np.zeros((1, 4, 4, 3)))
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC
    assert tree_digest(dest) == before
    assert [p.name for p in (tmp_path / "handoff").iterdir()] == ["b"], "a staging folder was left behind"


# --------------------------------------------------------------------------- safe by construction


def test_recipe_paths_resolve_against_the_recipe_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from recipes.loader import load_recipe

    (tmp_path / "recipes" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere" / "data").mkdir(parents=True)
    parent = tmp_path / "shared" / "base.yaml"
    parent.write_text("name: base\ndata: {kind: paired, root: data}\n")
    child = tmp_path / "recipes" / "child.yaml"
    child.write_text("extends: ../shared/base.yaml\nname: child\n")
    own = tmp_path / "recipes" / "own.yaml"
    own.write_text("name: own\ndata: {kind: paired, root: data}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_recipe(own)[0].data.root == tmp_path / "recipes" / "data"
    assert load_recipe(child)[0].data.root == tmp_path / "shared" / "data", "a parent's paths are its own"
    assert load_recipe(own, ["data.root=data"])[0].data.root == tmp_path / "elsewhere" / "data", "--set: cwd"
    assert main(["validate", str(own)]) == 0, capsys.readouterr().err


def test_paths_outside_the_declared_data_root_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "set").mkdir(parents=True)
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    monkeypatch.setenv("ISPDC_DATA_ROOT", str(allowed))
    recipe = allowed / "r.yaml"
    for root, ok in (("set", True), ("../outside", False), ("escape", False), (str(outside), False)):
        recipe.write_text(f"name: r\ndata: {{kind: paired, root: {root}}}\n")
        code, err = cli(capsys, "validate", str(recipe))
        if ok:
            assert code == 0, err
        else:
            assert_bad_input(code, err, str(recipe), "data.root", f"outside the data root {allowed}", "ISPDC_DATA_ROOT")
    torch.save({}, outside / "t.pt")
    recipe.write_text(f"name: r\nteacher: {{model: punet, checkpoint: {outside / 't.pt'}}}\n")
    assert_bad_input(*cli(capsys, "validate", str(recipe)), "teacher.checkpoint", "outside the data root")


def test_model_folder_with_pickled_weights_is_refused(tmp_path: Path) -> None:
    from compress.checkpoint import CheckpointError, ModelSpec, build_model, load_model, save_model

    spec = ModelSpec(family="student", name="smallnet", config={"width": 4})
    folder = save_model(build_model(spec), spec, tmp_path / "model")
    torch.save({"conv1.weight": PickleBomb(tmp_path / "PWNED")}, folder / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt: refused: not a plain tensor checkpoint .*posix\.system"):
        load_model(folder)
    assert not (tmp_path / "PWNED").exists()


def test_pretrained_teacher_checkpoint_is_used_instead_of_training(tmp_path: Path, tracking_uri: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from compress.checkpoint import load_model

    state = _teacher_state({"base_width": 4})
    torch.save(state, tmp_path / "teacher.pt")
    recipe = tiny_recipe(tmp_path, name="pretrained", run_until="teacher",
                         extra="teacher: {model: punet, config: {base_width: 4}, checkpoint: teacher.pt, "
                               "train: {steps: 1000000}}\n")
    work = tmp_path / "work"
    code, err = cli(capsys, "run", str(recipe), "--workdir", str(work), "--tracking-uri", tracking_uri)
    assert code == 0, err
    (done,) = work.glob("stages/teacher-*/done.json")
    model, _ = load_model(Path(json.loads(done.read_text())["result"]["model"]))
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[key])  # loaded as is: a million steps were not trained


def test_tracking_probe_accepts_any_http_answer_and_refuses_silence() -> None:
    import http.server
    import threading

    from recipes.preflight import TrackingUnreachable, check_tracking_uri

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
            self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_address[1]}")  # answers (404): reachable
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as silent:  # accepts connections but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(TrackingUnreachable, match=f"tracking server {uri} is unreachable"):
            check_tracking_uri(uri, timeout=0.5)
    check_tracking_uri("sqlite:///nowhere/mlflow.db")  # local stores are not probed


def test_nonfinite_message_blames_the_sum_when_every_term_is_finite() -> None:
    from distill.trainer import nonfinite_message

    assert "non-finite term(s): ssim=inf" in nonfinite_message("teacher", float("inf"), 7,
                                                               {"l1": 0.1, "ssim": float("inf")})
    line = nonfinite_message("student", float("inf"), 3, {"l1": 3e38, "kd_output": 3e38})
    assert "at step 3" in line and "every term is finite; their weighted sum overflowed" in line

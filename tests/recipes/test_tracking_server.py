"""A real MLflow tracking server (scripts/mlflow_server.sh) on a free loopback port: a tiny recipe runs
against it through export and hand-off (registering the bundle), `ispdc compare` and the registry read it
back, the MLflow UI shows it in headless Chromium, a sweep fans out over three processes against it, and
the server stops by its PID."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from distill.challenge_scores import mai2021_score
from recipes.cli import main
from recipes.metric_keys import SCORE_METRICS, STAGE_METRICS
from recipes.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

sys.path.insert(0, str(Path(__file__).parent))
from process_helpers import TINY_SWEEP  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "mlflow_server.sh"
TINY = [
    "teacher.config.width=8", "teacher.train.steps=2", "teacher.train.batch_size=2",
    "student.config.width=4", "student.train.steps=3", "student.train.batch_size=2",
    "prune.finetune.steps=1", "prune.finetune.batch_size=2", "data.patch_size=16", "data.patches_per_image=2",
    "data.max_side=96", "data.max_eval_images=1", "quantize.calibration_frames=2", "export.input_size=[16,16]",
    "export.frame_size=[64,96]",  # a small frame: the scores come from its latency (frame models: test_end_to_end)
    "handoff.register.name=tiny-isp", "handoff.register.alias=candidate",
]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    started = _script("start", "--dir", str(folder), "--port", str(port))
    assert started.returncode == 0, started.stderr
    pid = int((folder / "mlflow.pid").read_text())
    info = {"url": f"http://127.0.0.1:{port}", "dir": folder, "pid": pid, "port": port}
    yield info
    if (folder / "mlflow.pid").exists():  # the stop test did not run (or failed)
        _script("stop", "--dir", str(folder))


@pytest.fixture(scope="module")
def tiny_run(server: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("run")
    args = ["run", "quickstart", "--workdir", str(workdir), "--tracking-uri", server["url"]]
    assert main(args + [a for s in TINY for a in ("--set", s)]) == 0
    return {"workdir": workdir}


def test_recipe_logs_to_the_server_and_compare_reads_it_back(server: dict, tiny_run: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert not (tiny_run["workdir"] / "mlflow.db").exists()  # everything went to the server
    client = MlflowClient(server["url"])
    mlflow.set_tracking_uri(server["url"])
    runs = mlflow.search_runs(experiment_names=["quickstart"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("run_kind") == "recipe")
    headline = "latency_ms_frame_tflite_int8_2t"  # the shipped int8 model timed at the frame size
    metrics = parent.data.metrics
    assert set(STAGE_METRICS) | set(SCORE_METRICS) | {headline, "latency_ms_tflite_int8_2t"} <= set(metrics)
    assert metrics["mai2021_score"] == pytest.approx(mai2021_score(metrics["psnr"], metrics[headline]))
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]) == 7
    # artifacts went through the server (--serve-artifacts) into its artifact root
    assert list(server["dir"].glob("artifacts/**/handoff/**/model_card.json"))

    out = tmp_path / "compare"
    assert main(["compare", "--tracking-uri", server["url"], "--experiment", "quickstart", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("*") and "quickstart" in line)
    assert f"{parent.data.metrics['psnr']:.2f}" in row and headline in table
    assert "latency_ms (TFLite int8, 2 threads, 64x96 frame)" in table and "MAI 2021/2022 scores from it" in table
    assert (out / "pareto_psnr_latency.png").is_file() and (out / "pareto_psnr_size.html").is_file()

    # handoff.register registered the bundle through the server; rebuild it from the registry
    version = client.get_model_version_by_alias("tiny-isp", "candidate")
    assert version.tags["source_run"] == parent.info.run_id
    dest = tmp_path / "bundle"
    assert main(["handoff", "--from-registry", "tiny-isp@candidate", str(dest), "--tracking-uri", server["url"]]) == 0
    shipped = tiny_run["workdir"] / "handoff" / "smallnet_int8"
    for name in ("model.tflite", "model_card.json", "golden_output.npy"):
        assert (dest / name).read_bytes() == (shipped / name).read_bytes(), name


@pytest.mark.ui
def test_mlflow_ui_opens_on_runs_charts_and_registry(server: dict, tiny_run: dict, tmp_path: Path) -> None:
    """A fresh browser (as a new user) on the address `ispdc run` prints lands on the runs table, not on
    MLflow 3's GenAI overview; the recipe run's stages nest under it; the chart view and the registered
    model show too."""
    from recipes.ui_screenshot import find_chromium, screenshot_charts, screenshot_experiment, screenshot_model

    if find_chromium() is None:
        pytest.skip("no Chromium (/usr/bin/chromium): `make test` installs the Debian package where apt-get works")
    experiment = MlflowClient(server["url"]).get_experiment_by_name("quickstart")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    stages = ["teacher", "student", "prune", "fold", "quantize", "export", "handoff"]
    shot = screenshot_experiment(server["url"], "quickstart", tmp_path / "mlflow_ui.png", expect=["quickstart"],
                                 columns=("psnr", "size_kb", "latency_ms_frame_tflite_int8_2t"))
    assert "/runs?workflowType=machine_learning" in shot.url and "overview" not in shot.url  # where it landed
    for text in ["quickstart", *stages, "psnr", "size_kb", "latency_ms_frame_tflite_int8_2t"]:
        assert text in shot.text, text
    png = shot.path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000

    charts = screenshot_charts(server["url"], "quickstart", tmp_path / "mlflow_charts.png",
                               charts=("psnr", "mai2021_score"))  # each chart found, the PNG shows psnr's
    assert "compareRunsMode=CHART" in charts.url and "Model metrics" in charts.text and "psnr" in charts.text
    model = screenshot_model(server["url"], "tiny-isp", tmp_path / "mlflow_model.png",
                             expect=("Version 1", "candidate"))
    assert "tiny-isp" in model.text and "candidate" in model.text


def test_sweep_fans_out_over_processes_against_the_server(server: dict, tmp_path: Path) -> None:
    """Three `ispdc run SWEEP` processes, each with its own `--points`, against the server and one workdir:
    one parent run on the server, every point once, the last one closes the sweep."""
    recipe = tmp_path / "fanout.yaml"
    recipe.write_text(TINY_SWEEP)
    base = [sys.executable, "-m", "recipes.cli", "run", str(recipe), "--workdir", str(tmp_path / "work"),
            "--tracking-uri", server["url"]]
    procs = [subprocess.Popen([*base, "--points", points], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for points in ("0", "1..2", "2")]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], "\n=====\n".join(outputs)
    assert not (tmp_path / "work" / "mlflow.db").exists()  # everything went to the server
    mlflow.set_tracking_uri(server["url"])
    runs = mlflow.search_runs(experiment_names=["fanout"], output_format="list")
    sweeps = [r for r in runs if r.data.tags.get("run_kind") == "sweep"]
    points = [r for r in runs if r.data.tags.get("run_kind") == "point"]
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    assert sorted(r.data.tags["sweep_point"] for r in points) == ["0", "1", "2"]  # point 2 asked twice, run once
    assert {r.data.tags["mlflow.parentRunId"] for r in points} == {sweeps[0].info.run_id}


def test_server_stops_by_its_pid(server: dict) -> None:
    stopped = _script("stop", "--dir", str(server["dir"]), timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped pid {server['pid']}" in stopped.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(server["pid"], 0)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server["port"])) != 0
    assert not (server["dir"] / "mlflow.pid").exists()

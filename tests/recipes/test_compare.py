"""`ispdc compare`: Pareto marking, the trade-off table and the plots, on hand-made runs in a temp store."""
from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from distill.challenge_scores import mai2021_score
from recipes.cli import main
from recipes.compare import compare_runs, format_table, pareto_mask
from recipes.tracking import ensure_experiment

# name: (psnr, latency_ms, size_kb); B dominates A, C is fastest, D is best PSNR, E smallest but worst
POINTS = {"A": (20.0, 12.0, 50.0), "B": (21.0, 10.0, 40.0), "C": (19.0, 5.0, 45.0), "D": (23.0, 30.0, 90.0),
          "E": (18.0, 6.0, 30.0), "F": (19.0, 6.0, 45.0)}
OPTIMAL = {"B", "C", "D", "E"}  # F: C is as good on size and PSNR and faster


def test_pareto_mask_maximises_and_minimises() -> None:
    mask = pareto_mask(list(POINTS.values()), (True, False, False))
    assert {name for name, m in zip(POINTS, mask) if m} == OPTIMAL


def test_pareto_mask_equal_points_and_missing_values() -> None:
    assert pareto_mask([(1.0, 1.0), (1.0, 1.0)], (True, False)) == [True, True]  # neither is strictly better
    assert pareto_mask([(30.0, math.nan), (10.0, 9.0)], (True, False)) == [False, True]
    assert pareto_mask([], (True,)) == []


@pytest.fixture()
def store(tmp_path: Path) -> dict:
    """One sweep run with six points (each with a stage run under it), plus an unrelated recipe run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    ensure_experiment(uri, "sweepy")  # artifacts beside the temp store, not in ./mlruns
    points = {}
    with mlflow.start_run(run_name="sweepy sweep", tags={"run_kind": "sweep", "recipe": "sweepy"}) as sweep:
        for name, (psnr, latency, size) in POINTS.items():
            with mlflow.start_run(run_name=name, nested=True, tags={"run_kind": "point", "recipe": "sweepy"}) as run:
                mlflow.log_metrics({"psnr": psnr, "ssim": 0.5, "size_kb": size, "macs": 1e6,
                                    "latency_ms_frame_tflite_int8_2t": latency, "latency_ms_tflite_int8_2t": 0.5,
                                    "latency_ms_tflite_fp32_2t": 99.0, "mai2021_score": 999.0})
                mlflow.log_params({"export.frame_size": "[1088, 1920]", "export.input_size": "[64, 64]"})
                with mlflow.start_run(run_name="export", nested=True, tags={"stage": "export"}):
                    mlflow.log_metrics({"psnr": 99.0, "size_kb": 1.0, "latency_ms_tflite_int8_2t": 0.1})
                points[name] = run.info.run_id
    ensure_experiment(uri, "other")
    with mlflow.start_run(run_name="other", tags={"run_kind": "recipe", "recipe": "other"}):
        mlflow.log_metrics({"psnr": 40.0, "size_kb": 1.0, "ssim": 0.9, "macs": 1.0})
    return {"uri": uri, "sweep": sweep.info.run_id, "points": points, "tmp": tmp_path}


def test_compare_marks_pareto_rows_and_writes_and_logs_plots(store: dict) -> None:
    out = store["tmp"] / "compare"
    comparison = compare_runs(store["uri"], parent=store["sweep"], out_dir=out, log_to_run=store["sweep"])
    assert [r.name for r in comparison.rows] == list(POINTS)  # points only: no stage runs, no other recipe
    assert {r.name for r in comparison.rows if r.pareto} == OPTIMAL
    assert comparison.latency_key == "latency_ms_frame_tflite_int8_2t"  # the frame model, not the tile
    b = next(r for r in comparison.rows if r.name == "B")
    assert b.metrics["latency_ms"] == 10.0
    assert b.metrics["mai2021_score"] == pytest.approx(mai2021_score(21.0, 10.0))

    table = format_table(comparison).splitlines()
    starred = {line.split()[1] for line in table[2:-2] if line.startswith("*")}
    assert starred == OPTIMAL
    assert "latency_ms (TFLite int8, 2 threads, 1088x1920 frame)" in table[0]  # runtime and size in the header
    assert table[-1].startswith("latency: latency_ms_frame_tflite_int8_2t") and "scores from it" in table[-1]
    for stem in ("pareto_psnr_latency", "pareto_psnr_size"):
        png = (out / f"{stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        html = (out / f"{stem}.html").read_text()
        assert "Plotly.newPlot" in html and "<script src=\"http" not in html  # plotly.js inlined: opens offline
        assert len(html) > 1_000_000
    logged = {a.path for a in MlflowClient(store["uri"]).list_artifacts(store["sweep"], "compare")}
    assert {"compare/pareto_psnr_latency.png", "compare/pareto_psnr_size.html", "compare/trade_off.txt"} <= logged


def test_compare_cli_filters_and_bad_input(store: dict, capsys: pytest.CaptureFixture) -> None:
    uri = store["uri"]
    assert main(["compare", "--tracking-uri", uri, "--filter-tag", "recipe=other", "--out",
                 str(store["tmp"] / "o1")]) == 0
    out = capsys.readouterr().out
    assert "other" in out and " A " not in out
    assert main(["compare", "--tracking-uri", uri, "--experiment", "sweepy", "--latency-key",
                 "latency_ms_tflite_fp32_2t", "--out", str(store["tmp"] / "o2")]) == 0
    out = capsys.readouterr().out
    assert "latency_ms_tflite_fp32_2t" in out and "99.00" in out
    assert "TFLite fp32, 2 threads, 64x64 tile" in out  # a tile latency: named so, and no score from it
    assert "999" not in out and "MAI scores n/a" in out
    assert all(line.split()[-2:] == ["n/a", "n/a"] for line in out.splitlines() if " A " in line or " B " in line)
    assert main(["compare", "--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert main(["compare", "--tracking-uri", uri, "--filter-tag", "recipe"]) == 2
    assert main(["compare", "--workdir", str(store["tmp"] / "empty")]) == 2
    assert "no MLflow store" in capsys.readouterr().err


def test_headline_latency_follows_the_shipped_variant() -> None:
    from types import SimpleNamespace

    from recipes.metric_keys import headline_latency_key, score_latency_key, summary_metrics
    from recipes.results import ExportResult

    keys = {"latency_ms_tflite_fp32_2t", "latency_ms_tflite_int8_1t", "latency_ms_tflite_int8_2t",
            "latency_ms_tflite_int8_fio_2t", "latency_ms_tflite_float16_2t", "latency_ms_onnx_2t"}
    assert headline_latency_key(keys) == "latency_ms_tflite_int8_2t"  # the most threads of the shipped int8
    assert headline_latency_key(keys, "float16") == "latency_ms_tflite_float16_2t"
    assert headline_latency_key(keys, "dynamic") == "latency_ms_tflite_fp32_2t"  # not built: fp32
    assert score_latency_key(keys) is None  # tile timings only: no score
    frames = {"latency_ms_frame_tflite_int8_1t", "latency_ms_frame_tflite_int8_2t", "latency_ms_frame_tflite_fp32_2t"}
    assert headline_latency_key(frames | keys) == "latency_ms_frame_tflite_int8_2t"
    assert score_latency_key(frames | keys) == "latency_ms_frame_tflite_int8_2t"
    assert score_latency_key(frames | keys, "float16") is None  # the shipped variant was not timed at frame size

    model = {"psnr": 30.0, "ssim": 0.9, "params": 1.0, "macs": 1.0, "size_kb": 1.0}
    result = ExportResult(onnx=Path("m.onnx"), tflite={}, shipped_variant="float16", io_details=Path("io.json"))
    tile = {**model, "latency_ms_tflite_int8_2t": 1.0, "latency_ms_tflite_float16_2t": 4.0}
    summary = summary_metrics([SimpleNamespace(name="export", result=result, metrics=tile)])
    assert summary["latency_ms_tflite_float16_2t"] == 4.0 and "mai2021_score" not in summary  # no tile score
    frame = {**tile, "latency_ms_frame_tflite_float16_2t": 40.0}
    summary = summary_metrics([SimpleNamespace(name="export", result=result, metrics=frame)])
    assert summary["mai2021_score"] == pytest.approx(mai2021_score(30.0, 40.0))

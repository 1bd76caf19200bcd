"""One recipe at tiny sizes, end to end through the CLI: seven nested MLflow runs and a working bundle."""
from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from recipes.cli import main

TINY = [
    "teacher.config.width=8", "teacher.train.steps=4", "teacher.train.batch_size=2",
    "student.config.width=8", "student.train.steps=6", "student.train.batch_size=2",
    "prune.finetune.steps=2", "prune.finetune.batch_size=2", "prune.ratio=0.25",
    "data.patch_size=16", "data.patches_per_image=2", "data.max_side=128",
    "quantize.calibration_frames=4", "export.input_size=[32,32]", "export.frame_size=[96,160]",
]
STAGES = ["teacher", "student", "prune", "fold", "quantize", "export", "handoff"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("e2e")
    args = ["run", "quickstart", "--workdir", str(workdir)] + [a for s in TINY for a in ("--set", s)]
    code = main(args)
    assert code == 0
    return {"workdir": workdir, "args": args}


@pytest.mark.slow
def test_mlflow_holds_one_parent_with_seven_stage_runs(tiny_run: dict) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tiny_run['workdir'] / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["quickstart"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert sorted(r.data.tags["stage"] for r in children) == sorted(STAGES)
    assert parents[0].data.params["student.train.steps"] == "6"
    for child in children:
        for key in ("psnr", "ssim", "params", "macs", "size_kb"):
            assert key in child.data.metrics, (child.data.tags["stage"], key)
    export = next(c for c in children if c.data.tags["stage"] == "export")
    assert export.data.metrics["parity_psnr_db_tflite_fp32"] >= 60
    m = export.data.metrics
    assert m["latency_ms_frame_tflite_int8_2t"] > 0 and "psnr_frame_tflite_int8" in m
    assert export.data.metrics["gpu_compatible_tflite_int8"] == 1.0
    assert export.data.tags["gpu_delegate_tflite_int16x8"] == "flagged"
    assert export.data.metrics["parity_psnr_db_onnx"] >= 60
    # INT8 quality is reported next to fp32; a 6-step model is poor, but INT8 must track it closely
    m = export.data.metrics
    assert m["parity_psnr_db_tflite_int8"] > 30
    assert abs(m["psnr_tflite_int8"] - m["psnr_tflite_fp32"]) < 1.0


@pytest.mark.slow
def test_bundle_is_complete_and_its_runner_passes_the_golden_check(tiny_run: dict) -> None:
    bundle = tiny_run["workdir"] / "handoff" / "smallnet_int8"
    for name in ("model.tflite", "model_card.json", "README.md", "golden_input.npy", "golden_output.npy",
                 "run_model.py"):
        assert (bundle / name).is_file(), name
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["input"]["shape"] == [1, 32, 32, 4] and card["input"]["dtype"] == "int8"
    assert card["output"]["shape"] == [1, 64, 64, 3] and card["input"]["scale"] > 0
    assert card["input"]["channel_order"] == ["B", "Gb", "R", "Gr"]
    assert len(card["provenance"]["recipe_hash"]) == 64 and card["provenance"]["mlflow_run_id"]
    assert np.load(bundle / "golden_input.npy").shape == (1, 32, 32, 4)
    # the deployment side: delegates per variant, the model at the frame size, a recommendation
    built = ["tflite_fp32", "tflite_int8", "tflite_int16x8", "tflite_float16"]
    assert sorted(card["delegates"]) == sorted(built)
    int8 = card["delegates"]["tflite_int8"]
    assert int8["gpu"]["compatible"] and int8["xnnpack"] == {**int8["xnnpack"], "partitions": 1, "undelegated": []}
    assert not card["delegates"]["tflite_int16x8"]["gpu"]["compatible"]  # int16 DEQUANTIZE: no GPU kernel
    b = int8["builtin"]  # the reference kernels' PSNR and its drop vs XNNPACK's (the quality table's)
    assert abs(b["psnr"] + b["psnr_drop_db"] - card["quality"]["tflite_int8"]["psnr"]) < 1e-6
    assert abs(b["psnr_drop_db"]) < 1.0
    frame = card["frame"]
    assert frame["file"] == "model_frame.tflite" and frame["output_hw"] == [96, 160] and frame["packed_hw"] == [48, 80]
    assert frame["built_by"] == "resize" and all(frame["bit_exact_vs_resized_tile"].values())
    assert sorted(frame["quality"]) == sorted(built) and sorted(frame["latency_ms"]) == sorted(built)
    assert frame["quality"]["tflite_fp32"]["parity_psnr_db"] > 60
    assert card["files_sha256"]["model_frame.tflite"] and (bundle / "model_frame.tflite").is_file()
    from compress.runtime.parity import run_tflite
    assert run_tflite(bundle / "model_frame.tflite", np.zeros((1, 4, 48, 80), np.float32)).shape == (1, 3, 96, 160)
    rec = card["recommendation"]
    assert rec["cpu_xnnpack"]["variant"] in ("fp32", "int8", "float16") and rec["npu_int8"]["variant"] == "int8"
    assert rec["gpu_delegate"]["variant"] == "float16"
    readme = (bundle / "README.md").read_text()
    for heading in ("## At the frame size (96x160 output", "## Runtimes and delegates", "## Which variant on which"):
        assert heading in readme
    done = subprocess.run([sys.executable, "run_model.py"], cwd=bundle, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout


@pytest.mark.slow
def test_rerun_reuses_cached_stages_and_failed_gate_writes_no_bundle(tiny_run: dict, capsys) -> None:
    assert main(tiny_run["args"]) == 0
    out = capsys.readouterr().out
    assert out.count("(cached)") == 6  # every stage but the hand-off

    workdir = tiny_run["workdir"]
    strict = tiny_run["args"] + ["--set", "export.parity_min_db=500", "--set", "handoff.name=never"]
    assert main(strict) == 1
    err = capsys.readouterr().err
    assert "parity" in err and "no bundle" in err
    assert not (workdir / "handoff" / "never").exists()
    assert not list((workdir / "handoff").glob(".never*"))

    # export.require: int16x8 has no GPU kernel for its int16 DEQUANTIZE and XNNPACK leaves its int16 ops out
    required = tiny_run["args"] + ["--set", "quantize.mode=int16x8", "--set", "quantize.variants=[]",
                                   "--set", "export.require=[gpu,xnnpack]", "--set", "handoff.name=never"]
    assert main(required) == 1
    err = capsys.readouterr().err
    assert "export.require gpu" in err and "DEQUANTIZE" in err and "export.require xnnpack" in err
    assert "no bundle" in err and not (workdir / "handoff" / "never").exists()

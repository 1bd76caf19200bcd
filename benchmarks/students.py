"""Every registered student: held-out quality after a short training, TFLite size and Full-HD latency.

    .venv/bin/python -m benchmarks.students [--steps 800] [--students lwisp smallnet ...]

Per student (default configuration), in one process:

1. a student-only recipe (no teacher, no pruning; the quickstart's data and losses) runs to the export
   stage: ``--steps`` training steps on the embedded data, fold, INT8 calibration on RAW crops,
   ONNX + TFLite fp32/INT8 with the 60 dB parity gate; the held-out PSNR/SSIM are the export stage's
   (TFLite outputs on centre crops of the two held-out photos, ``--eval-size`` packed pixels);
2. the same trained, folded model exported again at the Full-HD output size of the challenges
   (1088x1920 RGB, packed input 544x960) to fp32 and INT8 TFLite (calibrated on the held-out RAW
   tiled up to that size: the calibration only sets ranges, the timing does not depend on it), timed
   with 1 and 2 interpreter threads;
3. the MAI 2021 and MAI 2022 scores computed from 1. and the 2-thread INT8 latency of 2.

The short training makes the PSNRs a comparison of the models under one budget, not of their
converged quality.  Writes ``benchmarks/results/students.json`` and a table in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.report import cli, measured_on, paragraph, publish, setup, stamp, table
from compress.checkpoint import load_model
from compress.export.onnx_export import export_onnx
from compress.export.tflite import convert_onnx_to_tflite
from compress.export.tflite_inspect import assert_builtin_only
from compress.runtime.latency import tflite_latency_ms
from compress.runtime.profile import count_macs, count_params, size_kb
from distill.challenge_scores import mai2021_score, mai2022_score
from recipes.results import ModelResult, QuantizeResult
from recipes.runner import run_recipe
from recipes.schema import Recipe
from students import list_students

FHD_PACKED = (544, 960)  # 1088x1920 RGB output


def _recipe(name: str, steps: int, eval_size: tuple[int, int]) -> dict:
    return {
        "name": f"bench_{name}", "seed": 0, "run_until": "export",
        "data": {"kind": "embedded", "max_side": 384, "patch_size": 64, "patches_per_image": 32},
        "student": {"model": name, "config": {},
                    "train": {"steps": steps, "lr": 1.0e-3, "batch_size": 4, "losses": {"l1": 1.0, "ssim": 0.2}},
                    "distill": {"output_kd": 0.0}},
        "quantize": {"calibration_frames": 16},
        "export": {"input_size": list(eval_size), "latency_threads": 2},
    }


def _fhd_calibration(eval_raw: np.ndarray, frames: int = 4) -> np.ndarray:
    """Held-out packed RAW crops tiled (mirrored) up to the Full-HD packed size."""
    h, w = FHD_PACKED
    reps = (1, 1, -(-h // eval_raw.shape[2]) + 1, -(-w // eval_raw.shape[3]) + 1)
    tiled = np.tile(np.concatenate([eval_raw, eval_raw[..., ::-1]], axis=3), reps)[..., :h, :w]
    return np.ascontiguousarray(tiled[:frames]).astype(np.float32)


def measure(name: str, steps: int, eval_size: tuple[int, int], root: Path) -> dict:
    work = root / name
    work.mkdir(parents=True)
    data = _recipe(name, steps, eval_size)
    (work / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))  # logged with the MLflow run
    recipe = Recipe.model_validate(data)
    start = time.perf_counter()
    _, outcomes = run_recipe(recipe, work / "recipe.yaml", work, use_cache=False)
    train_s = time.perf_counter() - start
    by_stage = {o.name: o for o in outcomes}
    quality = by_stage["export"].metrics

    model, _ = load_model(by_stage["fold"].typed(ModelResult).model)
    model.eval()
    calibration = _fhd_calibration(np.load(by_stage["quantize"].typed(QuantizeResult).calibration))
    onnx_path = export_onnx(model, work / "fhd" / "model.onnx", (1, 4, *FHD_PACKED))
    tflite = convert_onnx_to_tflite(onnx_path, work / "fhd" / "tflite", calibration, modes=("int8",))
    row: dict[str, Any] = {"student": name, "params": count_params(model),
                           "gmacs_fhd": count_macs(model, (1, 4, *FHD_PACKED)) / 1e9,
                           "train_and_export_s": train_s, "psnr_fp32": quality["psnr_tflite_fp32"],
                           "psnr_int8": quality["psnr_tflite_int8"], "ssim_int8": quality["ssim_tflite_int8"]}
    for fmt in ("fp32", "int8"):
        assert_builtin_only(tflite[fmt])
        row[f"size_kb_{fmt}"] = size_kb(tflite[fmt])
        for threads in (1, 2):
            row[f"latency_ms_{fmt}_{threads}t"] = tflite_latency_ms(tflite[fmt], num_threads=threads,
                                                                    runs=5)["median_ms"]
    runtime = row["latency_ms_int8_2t"]
    row["mai2021_score"] = mai2021_score(row["psnr_int8"], runtime)
    row["mai2022_score"] = mai2022_score(row["psnr_int8"], runtime)
    return row


def publish_result(result: dict) -> None:
    rows = table(["student", "params", "GMACs FHD", "PSNR fp32 / int8", "size KB fp32 / int8", "FHD ms fp32 1t / 2t",
                  "FHD ms int8 1t / 2t", "MAI21", "MAI22"],
                 ([r["student"], f"{r['params']:,}", f"{r['gmacs_fhd']:.1f}",
                   f"{r['psnr_fp32']:.2f} / {r['psnr_int8']:.2f}",
                   f"{r['size_kb_fp32']:.0f} / {r['size_kb_int8']:.0f}",
                   f"{r['latency_ms_fp32_1t']:.0f} / {r['latency_ms_fp32_2t']:.0f}",
                   f"{r['latency_ms_int8_1t']:.0f} / {r['latency_ms_int8_2t']:.0f}",
                   f"{r['mai2021_score']:.2f}", f"{r['mai2022_score']:.3g}"] for r in result["students"]))
    intro = paragraph("""
        {measured}.  Each student trained {steps} steps (batch 4, 64-px packed crops, L1 + 0.2 SSIM, no
        teacher) on the embedded data; PSNR of the TFLite models on {eval_size[0]}x{eval_size[1]} packed
        centre crops of the held-out photos.  Latency: TFLite interpreter (XNNPACK) at Full-HD output
        (packed input 544x960), median of 5.  Scores use the INT8 PSNR and the 2-thread INT8 latency (CPU,
        not the challenges' phones: compare rows, not leaderboards).""", measured=measured_on(result), **result)
    publish("students", "Students: quality, size and Full-HD latency", intro, rows, result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--students", nargs="*", default=None)
    parser.add_argument("--eval-size", type=int, nargs=2, default=(96, 160))
    args = parser.parse_args()
    setup(2)
    names = args.students or list_students()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, args.steps, tuple(args.eval_size), Path(tmp)) for n in names]
    result = stamp(steps=args.steps, eval_size=list(args.eval_size), students=rows)
    publish_result(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

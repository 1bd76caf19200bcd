"""The export stage's deployment side: what each phone runtime makes of every variant, the variants at
the app's frame size, and ``export.require``.

Per TFLite variant: GPU-delegate compatibility (``compress.export.delegates``), XNNPACK's partitions,
and the quality on TFLite's builtin kernels (the stand-in for NPU integer paths).  With
``export.frame_size`` every variant is rebuilt at that size by rewriting the tile model's shapes
(``compress.export.frame_model``: the calibrated quantization parameters stay), or, where the graph
bakes a shape in, converted again from an ONNX export at that size; each is scored on the held-out
photos reflect-padded into the frame and timed.  Everything lands in ``deployment.json``, read by the
hand-off stage for the card.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.export.delegates import builtin_section, gpu_report, summarise, xnnpack_section
from compress.export.frame_model import FrameResizeError, matches_resized, reflect_into_frame, resize_tflite
from compress.export.onnx_export import export_onnx
from compress.export.tflite import convert_onnx_to_tflite
from compress.runtime.latency import tflite_latency_ms
from compress.runtime.parity import run_tflite
from distill.metrics import psnr, psnr_db, ssim
from recipes.context import RunContext, StageError
from recipes.metric_keys import (
    builtin_format,
    frame_format,
    gpu_compatible_key,
    latency_key,
    parity_key,
    psnr_key,
    ssim_key,
    tflite_format,
    xnnpack_partitions_key,
    xnnpack_undelegated_key,
)

FRAME_LATENCY_RUNS = 3
"""Timed runs per variant at the frame size (after one warm-up): a Full-HD run takes 10-1000x a tile's."""
SLOW_RUN_MS = 1000.0
"""A variant whose first frame-size run takes longer (int16x8 on builtin kernels: ~6 s at Full HD) is
timed by that one run: its median would not move, and the stage would spend half a minute on it."""


def frame_latency_ms(path: Path, threads: int) -> tuple[float, int]:
    """(median ms, runs timed) at the frame size; one cold run first, which is the figure when slow."""
    first = tflite_latency_ms(path, num_threads=threads, warmup=0, runs=1)["median_ms"]
    if first > SLOW_RUN_MS:
        return first, 1
    return tflite_latency_ms(path, num_threads=threads, warmup=1, runs=FRAME_LATENCY_RUNS)["median_ms"], \
        FRAME_LATENCY_RUNS


def delegate_report(tflite: dict[str, Path], raws: np.ndarray, target: torch.Tensor, metrics: dict[str, float],
                    threads: int) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """``{fmt: {"gpu", "xnnpack", "builtin"}}`` for every variant, and its metrics."""
    report: dict[str, dict[str, Any]] = {}
    out: dict[str, float] = {}
    for variant, path in tflite.items():
        fmt = tflite_format(variant)
        builtin = run_tflite(path, raws, num_threads=threads, builtin=True)
        psnr_builtin = psnr(torch.from_numpy(np.clip(builtin, 0, 1)), target)
        report[fmt] = {"gpu": gpu_report(path), "xnnpack": xnnpack_section(path),
                       "builtin": builtin_section(psnr_builtin, metrics[psnr_key(fmt)])}
        out[gpu_compatible_key(fmt)] = float(report[fmt]["gpu"]["compatible"])
        out[xnnpack_partitions_key(fmt)] = float(report[fmt]["xnnpack"]["partitions"])
        out[xnnpack_undelegated_key(fmt)] = float(len(report[fmt]["xnnpack"]["undelegated"]))
        out[psnr_key(builtin_format(fmt))] = psnr_builtin
    return report, out


def require_failures(ctx: RunContext, report: dict[str, dict[str, Any]], metrics: dict[str, float]) -> list[str]:
    """One message per ``export.require`` runtime that cannot take the shipped variant, with the reason."""
    variant = ctx.recipe.quantize.mode
    fmt = tflite_format(variant)
    r = report[fmt]
    failures = []
    for runtime in ctx.recipe.export.require:
        if runtime == "gpu" and not r["gpu"]["compatible"]:
            reasons = "; ".join(f"{f['op']}: {f['reason']}" for f in r["gpu"]["flagged"])
            failures.append(f"export.require gpu: the GPU delegate cannot take {fmt} ({reasons})")
        elif runtime == "xnnpack" and not r["xnnpack"]["whole_graph"]:
            x = r["xnnpack"]
            failures.append(f"export.require xnnpack: XNNPACK splits {fmt} into {x['partitions']} partition(s) and "
                            f"leaves {sorted(set(x['undelegated']))} to the builtin kernels")
        elif runtime == "builtin":
            drop = metrics[psnr_key(tflite_format("fp32"))] - r["builtin"]["psnr"]
            budget = ctx.recipe.quantize.gate.drop_budget(variant)
            if drop > budget:
                failures.append(f"export.require builtin: on TFLite's builtin kernels {fmt} loses {drop:.3f} dB vs "
                                f"fp32, over quantize.gate.max_drop_db.{variant} {budget:g} dB")
    return failures


def _frame_calibration(calibration: np.ndarray, packed_hw: tuple[int, int], frames: int = 4) -> np.ndarray:
    """Calibration crops reflect-padded to the frame (only the ONNX fallback needs calibration again)."""
    return np.stack([reflect_into_frame(c, packed_hw)[0] for c in calibration[:frames]]).astype(np.float32)


def frame_packed_hw(frame_size: tuple[int, int], upscale: int, multiple: int) -> tuple[int, int]:
    """The packed input of ``export.frame_size`` (output pixels); ``StageError`` naming the key when the
    model cannot produce that output (not a multiple of its upscale, or of its input multiple once packed)."""
    packed = (frame_size[0] // upscale, frame_size[1] // upscale)
    if any(p * upscale != f or p % multiple for p, f in zip(packed, frame_size)):
        raise StageError(f"export: export.frame_size {list(frame_size)} does not fit the model: output / {upscale} "
                         f"(the packed input) must be a whole multiple of {multiple} on both sides")
    return packed


def build_frame_models(ctx: RunContext, folder: Path, model: nn.Module, tflite: dict[str, Path],
                       calibration: np.ndarray, packed_hw: tuple[int, int]) -> tuple[dict[str, Path], str, dict]:
    """Every variant at ``packed_hw``: ``(paths, "resize" | "onnx", {fmt: bit-exact vs resized tile})``."""
    upscale = int(getattr(model, "upscale", 2))
    frames: dict[str, Path] = {}
    try:
        for variant, path in tflite.items():
            frames[variant] = resize_tflite(path, folder / "frame" / f"model_{variant}.tflite", packed_hw, upscale)
        exact = {tflite_format(v): matches_resized(tflite[v], p) for v, p in frames.items()}
        return frames, "resize", exact
    except FrameResizeError as exc:
        print(f"export: frame size by shape rewrite failed ({exc}); converting ONNX at the frame size")
    onnx_path = export_onnx(model, folder / "frame" / "model.onnx", (1, 4, *packed_hw))
    qcfg = ctx.recipe.quantize
    built = convert_onnx_to_tflite(onnx_path, folder / "frame" / "tflite", _frame_calibration(calibration, packed_hw),
                                   int8_io=qcfg.int8_io, modes=[v for v in tflite if v != "fp32"])
    return {v: built[v] for v in tflite}, "onnx", {}


def frame_figures(ctx: RunContext, model: nn.Module, frames: dict[str, Path], packed_hw: tuple[int, int],
                  threads: int) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, int],
                                         dict[str, float]]:
    """Quality (held-out photos reflect-padded into the frame, output cropped back) and latency per variant."""
    inputs, boxes = [], []
    for pair in ctx.data.eval_pairs:
        frame, box = reflect_into_frame(np.asarray(pair.raw, dtype=np.float32), packed_hw)
        inputs.append(frame)
        boxes.append(box)
    with torch.no_grad():
        references = [model(torch.from_numpy(x[None])).numpy() for x in inputs]
    quality: dict[str, dict[str, float]] = {}
    latency: dict[str, float] = {}
    runs: dict[str, int] = {}
    metrics: dict[str, float] = {}
    for variant, path in frames.items():
        fmt, ffmt = tflite_format(variant), frame_format(tflite_format(variant))
        psnrs, ssims, parities = [], [], []
        for x, ref, (top, left, h, w), pair in zip(inputs, references, boxes, ctx.data.eval_pairs):
            out = run_tflite(path, x[None], num_threads=threads)
            parities.append(psnr_db(out, ref))
            pred = torch.from_numpy(np.clip(out[:, :, : 2 * h, : 2 * w], 0, 1))
            target = torch.from_numpy(np.asarray(pair.rgb, dtype=np.float32)[None, :, 2 * top : 2 * (top + h),
                                                                            2 * left : 2 * (left + w)])
            psnrs.append(psnr(pred, target))
            ssims.append(ssim(pred, target))
        quality[fmt] = {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)),
                        "parity_psnr_db": float(np.mean(parities))}
        latency[fmt], runs[fmt] = frame_latency_ms(path, threads)
        metrics.update({psnr_key(ffmt): quality[fmt]["psnr"], ssim_key(ffmt): quality[fmt]["ssim"],
                        parity_key(ffmt): quality[fmt]["parity_psnr_db"], latency_key(ffmt, threads): latency[fmt]})
    return quality, latency, runs, metrics


def deployment(ctx: RunContext, folder: Path, model: nn.Module, tflite: dict[str, Path], raws: np.ndarray,
               target: torch.Tensor, metrics: dict[str, float],
               calibration: np.ndarray) -> tuple[dict[str, float], dict[str, Path], Path]:
    """The delegate report, ``export.require`` and the frame-size models; raises ``StageError`` (no bundle)
    when a required runtime cannot take the shipped variant or the frame size does not fit the model."""
    cfg = ctx.recipe.export
    threads = cfg.latency_threads
    report, out = delegate_report(tflite, raws, target, metrics, threads)
    for line in summarise(report):
        print(f"export: {line}")
    ctx.tracker.log_metrics(out)
    ctx.tracker.set_tags({f"gpu_delegate_{fmt}": "compatible" if r["gpu"]["compatible"] else "flagged"
                          for fmt, r in report.items()})
    failures = require_failures(ctx, report, metrics)
    if failures:
        raise StageError(f"export: {'; '.join(failures)}; no bundle is written")
    frame: dict[str, Any] | None = None
    frames: dict[str, Path] = {}
    if cfg.frame_size is not None:
        packed_hw = frame_packed_hw(cfg.frame_size, int(getattr(model, "upscale", 2)),
                                    int(getattr(model, "input_multiple", 1)))
        frames, path_taken, exact = build_frame_models(ctx, folder, model, tflite, calibration, packed_hw)
        quality, latency, runs, frame_metrics = frame_figures(ctx, model, frames, packed_hw, threads)
        out.update(frame_metrics)
        ctx.tracker.log_metrics(frame_metrics)
        frame = {"file": "model_frame.tflite", "output_hw": list(cfg.frame_size), "packed_hw": list(packed_hw),
                 "built_by": path_taken, "bit_exact_vs_resized_tile": exact, "quality": quality,
                 "latency_ms": latency, "threads": threads, "latency_runs": runs,
                 "evaluation": f"{len(ctx.data.eval_pairs)} held-out images, each reflect-padded (or centre-"
                               f"cropped) into the {packed_hw[0]}x{packed_hw[1]} packed frame and the output "
                               "cropped back to the image; parity vs PyTorch over the whole frame"}
    path = folder / "deployment.json"
    path.write_text(json.dumps({"delegates": report, "frame": frame}, indent=2))
    ctx.tracker.log_artifact(path, artifact_path="deployment")
    for frame_path in frames.values():
        ctx.tracker.log_artifact(frame_path, artifact_path="deployment/frame")
    return out, frames, path

"""QAT with learned ranges against the same fine-tune without fake quantization, for ``benchmarks.quant``.

For one student (trained and folded by ``benchmarks.quant_common.trained``) and each seed:

- **QAT**: ``compress.quantization.qat.qat_finetune(learn_ranges=True)``, a quarter of the training steps at a
  tenth of the learning rate with output KD (0.5) from the float model; exported with its learned ranges
  written into TFLite (``LearnedRangeMatcher``; tensors without a learned range take ``mse``) and, to show
  what carrying the ranges is worth, also with TFLite's min/max;
- **control**: the same fine-tune (steps, lr, KD, data, seed) without fake quantization, exported with
  min/max and with ``mse`` ranges (the best all-INT8 range setting without training).

Each model is scored on XNNPACK and builtin kernels: ``psnr_drop_db`` against the fp32 TFLite model of the
*original* float weights (what a fine-tune is meant to replace) and ``parity_db`` against the fp32 TFLite model
of its own weights (the quantization error alone, what QAT trains against).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
import torch

from benchmarks.quant_common import LR, PATCH, RUNTIMES, TRAIN, Builds, Photos, int8_source, trained
from compress.export.tflite import convert_onnx_to_tflite
from compress.quantization.learned_ranges import LearnedRangeMatcher
from compress.quantization.qat import qat_finetune
from compress.quantization.ranges import RangeSetting
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.distiller import Distiller
from distill.metrics import psnr_db
from distill.trainer import TrainSpec, train

KD_WEIGHT = 0.5
FINETUNE_FRACTION = 4  # a quarter of the training steps
LR_DIVISOR = 10
METHOD_KEYS = {"QAT (learned ranges)": "qat_learned_ranges", "QAT (min/max)": "qat_minmax",
               "control (min/max)": "control_minmax", "control (mse)": "control_mse"}


def _export(model: torch.nn.Module, hooks: dict[str, RangeSetting], work: Path, held: Photos,
            frames: np.ndarray) -> dict[str, Path]:
    source = int8_source(model, held.shape, work)
    return convert_onnx_to_tflite(source, work / "tflite", frames, int8_io=True, modes=[], extra=Builds(hooks))


def qat_rows(name: str, steps: int, reuse: Path | None, work: Path, held: Photos, frames: np.ndarray, seeds: int,
             ptq_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per runtime: the seeds' drops and parities for QAT and the control, and their paired differences."""
    float_model = trained(name, steps, reuse)
    original = _export(float_model, {}, work / "float", held, frames)["fp32"]
    float_psnr = {rt: held.psnr(held.run(original, rt)) for rt in RUNTIMES}
    spec = TrainSpec(steps=max(1, steps // FINETUNE_FRACTION), lr=LR / LR_DIVISOR, batch_size=TRAIN["batch_size"],
                     losses=TRAIN["losses"], log_every=10_000)
    data = PairedPatchDataset(load_embedded("train", seed=0), patch_size=PATCH, patches_per_image=32, seed=0)
    per_seed: list[dict[str, Any]] = []
    for seed in range(seeds):
        qat = qat_finetune(float_model, data, spec, calibration=torch.from_numpy(frames), kd_weight=KD_WEIGHT,
                           seed=seed, learn_ranges=True, desc=f"{name} qat s{seed}")
        matcher = LearnedRangeMatcher(qat.learned_ranges)
        qat_files = _export(qat.model, {"QAT (learned ranges)": RangeSetting("mse", key="int8_l", given=matcher),
                                        "QAT (min/max)": RangeSetting("minmax", key="int8_m")},
                            work / f"qat{seed}", held, frames)
        control = copy.deepcopy(float_model).train()
        train(control, data, spec, seed=seed, kd=Distiller(copy.deepcopy(float_model), output_weight=KD_WEIGHT),
              desc=f"{name} control s{seed}")
        control_files = _export(control.eval(), {"control (min/max)": RangeSetting("minmax", key="int8_m"),
                                                 "control (mse)": RangeSetting("mse", key="int8_s")},
                                work / f"control{seed}", held, frames)
        for files in (qat_files, control_files):
            own = {rt: held.run(files["fp32"], rt) for rt in RUNTIMES}
            for method, path in files.items():
                if method == "fp32":
                    continue
                for rt in RUNTIMES:
                    out = held.run(path, rt)
                    row = {"model": name, "runtime": rt, "method": method, "seed": seed,
                           "psnr_drop_db": float_psnr[rt] - held.psnr(out), "parity_db": psnr_db(out, own[rt]),
                           "fp32_drop_db": float_psnr[rt] - held.psnr(own[rt])}
                    if method == "QAT (learned ranges)":
                        row.update(learned_ranges=len(qat.learned_ranges), matched_tensors=matcher.matched)
                    per_seed.append(row)
                    print(json.dumps(row), flush=True)
    return summarise(name, per_seed, ptq_rows)


def summarise(name: str, rows: list[dict[str, Any]], ptq_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """QAT (learned ranges) minus each control, paired by seed, per runtime: mean, min, max."""
    out = []
    for rt in RUNTIMES:
        by = {(r["method"], r["seed"]): r for r in rows if r["runtime"] == rt}
        seeds = sorted({r["seed"] for r in rows})
        ptq = next(r for r in ptq_rows if r["runtime"] == rt and r["method"] == "minmax")
        summary: dict[str, Any] = {"model": name, "runtime": rt, "seeds": len(seeds),
                                   "ptq_drop_db": ptq["psnr_drop_db"], "rows": [r for r in rows if r["runtime"] == rt]}
        for method, key in METHOD_KEYS.items():
            summary[f"{key}_drop_db_mean"] = mean(by[(method, s)]["psnr_drop_db"] for s in seeds)
            summary[f"{key}_parity_db_mean"] = mean(by[(method, s)]["parity_db"] for s in seeds)
        # the headline: learned-range QAT against the control's best range setting of the two, per seed
        best_control = {s: min((by[("control (min/max)", s)], by[("control (mse)", s)]),
                               key=lambda r: r["psnr_drop_db"]) for s in seeds}
        gains = [best_control[s]["psnr_drop_db"] - by[("QAT (learned ranges)", s)]["psnr_drop_db"] for s in seeds]
        parity = [by[("QAT (learned ranges)", s)]["parity_db"] - best_control[s]["parity_db"] for s in seeds]
        summary.update(
            qat_drop_db_mean=summary["qat_learned_ranges_drop_db_mean"],
            control_drop_db_mean=mean(best_control[s]["psnr_drop_db"] for s in seeds),
            qat_minus_control_psnr_db_mean=mean(gains), qat_minus_control_psnr_db_min=min(gains),
            qat_minus_control_psnr_db_max=max(gains),
            qat_minus_control_parity_db_mean=mean(parity), qat_minus_control_parity_db_min=min(parity),
            qat_minus_control_parity_db_max=max(parity))
        out.append(summary)
    return out

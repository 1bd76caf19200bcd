"""Per-variant quality figures of the exported TFLite models and the quality gate over them.

Every variant (fp32, the shipped mode, the extra variants) is scored the same way on the held-out
crops: PSNR/SSIM vs ground truth, parity (PSNR) and per-output-channel RMSE vs the PyTorch model,
file size, latency, and its PSNR drop against the fp32 TFLite model.  The gate turns the recipe's
budgets into one ``StageError`` naming every variant over budget, its value and the key to change.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.runtime.parity import run_tflite
from compress.runtime.profile import size_kb
from distill.metrics import psnr, psnr_db, ssim
from recipes.metric_keys import drop_key, parity_key, psnr_key, rmse_key, size_key, ssim_key, tflite_format
from recipes.schema import QuantizeStage

CHANNELS = ("r", "g", "b")


def channel_rmse(out: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """RMSE per output channel (NCHW, RGB) of ``out`` against ``reference``."""
    err = (np.asarray(out, dtype=np.float64) - np.asarray(reference, dtype=np.float64)) ** 2
    return {c: float(np.sqrt(err[:, i].mean())) for i, c in enumerate(CHANNELS)}


def score_tflite(path: Path, fmt: str, raws: np.ndarray, reference: np.ndarray, target: torch.Tensor,
                 threads: int) -> dict[str, float]:
    """``psnr_<fmt>``, ``ssim_<fmt>``, ``parity_psnr_db_<fmt>``, ``size_kb_<fmt>`` and
    ``rmse_<fmt>_r/_g/_b`` (vs PyTorch) of one ``.tflite``."""
    scores = score_outputs(run_tflite(path, raws, num_threads=threads), fmt, reference, target)
    scores[size_key(fmt)] = size_kb(path)
    return scores


def score_outputs(out: np.ndarray, fmt: str, reference: np.ndarray, target: torch.Tensor) -> dict[str, float]:
    """``psnr_<fmt>``/``ssim_<fmt>`` vs ground truth, ``parity_psnr_db_<fmt>`` and ``rmse_<fmt>_r/_g/_b``
    vs the PyTorch output, for the output of any runtime (NCHW)."""
    pred = torch.from_numpy(np.clip(out, 0, 1))
    scores = {psnr_key(fmt): psnr(pred, target), ssim_key(fmt): ssim(pred, target),
              parity_key(fmt): psnr_db(out, reference)}
    scores.update({rmse_key(fmt, c): v for c, v in channel_rmse(out, reference).items()})
    return scores


def tflite_psnr(path: Path, raws: np.ndarray, target: torch.Tensor, threads: int) -> float:
    """PSNR vs ground truth only (the selective-precision search calls this once per step)."""
    return psnr(torch.from_numpy(np.clip(run_tflite(path, raws, num_threads=threads), 0, 1)), target)


def gate_failures(metrics: dict[str, float], quantize: QuantizeStage, fp32_parity_min_db: float) -> list[str]:
    """One message per quantized variant (TFLite and ``quantize.x86``) over its ``quantize.gate`` budget
    (fp32's parity is checked by the export stage against ``export.parity_min_db``, as before)."""
    failures = []
    keyed = [(v, tflite_format(v)) for v in quantize.built_variants() if v != "fp32"]
    for variant, fmt in keyed + [(v, v) for v in quantize.x86]:
        drop = metrics[drop_key(fmt)]
        budget = quantize.gate.drop_budget(variant)
        if drop > budget:
            failures.append(f"{variant} PSNR drop {drop:.3f} dB exceeds quantize.gate.max_drop_db.{variant} "
                            f"{budget:g} dB")
        parity = metrics[parity_key(fmt)]
        floor = quantize.gate.parity_budget(variant, fp32_parity_min_db)
        if parity < floor:
            failures.append(f"{variant} parity vs PyTorch {parity:.2f} dB is below "
                            f"quantize.gate.min_parity_db.{variant} {floor:g} dB")
    return failures

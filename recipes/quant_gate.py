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

from recipes.schema import QuantizeStage

CHANNELS = ("r", "g", "b")
QUANT_DESCRIPTIONS = {
    "fp32": "fp32: float32 weights and activations (no quantization)",
    "float16": "float16: float16 weights (dequantized to float32 at load), float32 activations",
    "dynamic": "dynamic range: int8 weights (per-channel), float activations quantized on the fly inside "
               "each op; weight tensors under 1024 elements stay float32",
    "int16x8": "int16x8: int8 weights (per-channel), int16 activations (per-tensor); ops without a 16x8 "
               "kernel run in float between QUANTIZE/DEQUANTIZE; float input/output",
    "int8": "int8: per-channel int8 weights, per-tensor int8 activations",
}


def describe_variant(variant: str, int8_io: bool, float_layers: list[str] | None = None) -> str:
    """One line an app team can read: what is quantized and what the I/O dtype is."""
    text = QUANT_DESCRIPTIONS[variant]
    if variant == "int8":
        text += ", int8 input/output" if int8_io else ", float input/output"
        if float_layers:
            text += f"; {len(float_layers)} layer(s) kept in float (selective precision)"
    return text


def channel_rmse(out: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """RMSE per output channel (NCHW, RGB) of ``out`` against ``reference``."""
    err = (np.asarray(out, dtype=np.float64) - np.asarray(reference, dtype=np.float64)) ** 2
    return {c: float(np.sqrt(err[:, i].mean())) for i, c in enumerate(CHANNELS)}


def score_tflite(path: Path, fmt: str, raws: np.ndarray, reference: np.ndarray, target: torch.Tensor,
                 threads: int) -> dict[str, float]:
    """``psnr_<fmt>``, ``ssim_<fmt>``, ``parity_psnr_db_<fmt>``, ``size_kb_<fmt>`` and
    ``rmse_<fmt>_r/_g/_b`` (vs PyTorch) of one ``.tflite``."""
    from compress.parity import run_tflite
    from compress.profile import size_kb

    scores = score_outputs(run_tflite(path, raws, num_threads=threads), fmt, reference, target)
    scores[f"size_kb_{fmt}"] = size_kb(path)
    return scores


def score_outputs(out: np.ndarray, fmt: str, reference: np.ndarray, target: torch.Tensor) -> dict[str, float]:
    """``psnr_<fmt>``/``ssim_<fmt>`` vs ground truth, ``parity_psnr_db_<fmt>`` and ``rmse_<fmt>_r/_g/_b``
    vs the PyTorch output, for the output of any runtime (NCHW)."""
    from compress.parity import psnr_db
    from distill.metrics import psnr, ssim

    pred = torch.from_numpy(np.clip(out, 0, 1))
    scores = {f"psnr_{fmt}": psnr(pred, target), f"ssim_{fmt}": ssim(pred, target),
              f"parity_psnr_db_{fmt}": psnr_db(out, reference)}
    scores.update({f"rmse_{fmt}_{c}": v for c, v in channel_rmse(out, reference).items()})
    return scores


def tflite_psnr(path: Path, raws: np.ndarray, target: torch.Tensor, threads: int) -> float:
    """PSNR vs ground truth only (the selective-precision search calls this once per step)."""
    from compress.parity import run_tflite
    from distill.metrics import psnr

    return psnr(torch.from_numpy(np.clip(run_tflite(path, raws, num_threads=threads), 0, 1)), target)


def gate_failures(metrics: dict[str, float], quantize: QuantizeStage, fp32_parity_min_db: float) -> list[str]:
    """One message per quantized variant (TFLite and ``quantize.x86``) over its ``quantize.gate`` budget
    (fp32's parity is checked by the export stage against ``export.parity_min_db``, as before)."""
    failures = []
    keyed = [(v, f"tflite_{v}") for v in quantize.built_variants() if v != "fp32"]
    for variant, fmt in keyed + [(v, v) for v in quantize.x86]:
        drop = metrics[f"psnr_drop_db_{fmt}"]
        budget = quantize.gate.drop_budget(variant)
        if drop > budget:
            failures.append(f"{variant} PSNR drop {drop:.3f} dB exceeds quantize.gate.max_drop_db.{variant} "
                            f"{budget:g} dB")
        parity = metrics[f"parity_psnr_db_{fmt}"]
        floor = quantize.gate.parity_budget(variant, fp32_parity_min_db)
        if parity < floor:
            failures.append(f"{variant} parity vs PyTorch {parity:.2f} dB is below "
                            f"quantize.gate.min_parity_db.{variant} {floor:g} dB")
    return failures

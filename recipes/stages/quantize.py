"""Quantize stage: calibration crops and activation statistics; with ``quantize.qat`` also the
quantization-aware fine-tune, whose float model (folded first, as the export ships it) is what the
export converts."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.checkpoint import ModelSpec, load_model, save_model
from compress.fold import fold_model
from compress.quantization.calibration import calibration_crops
from compress.runtime.profile import count_macs, count_params, size_kb
from recipes.context import RunContext, StageError
from recipes.results import QuantizeResult
from recipes.stages.common import input_shape, quality, resumable, train_log


def calibration_frames(ctx: RunContext, count: int, selection: str = "random") -> np.ndarray:
    """``count`` RAW crops of the export input size from the *training* data (NCHW float32), picked as
    ``quantize.calibration_selection`` says (``compress.quantization.calibration``: random, or spread
    over brightness)."""
    try:
        return calibration_crops([p.raw for p in ctx.data.train_pairs], count, ctx.recipe.export.input_size,
                                 selection, seed=ctx.recipe.seed)  # type: ignore[arg-type]
    except ValueError as exc:
        raise StageError(f"quantize: {exc}") from None


@torch.no_grad()
def activation_ranges(model: nn.Module, frames: np.ndarray) -> dict[str, dict[str, float]]:
    """Min / max / 99.99th-percentile |x| of every leaf module's output on the calibration frames.

    INT8 uses one scale per activation tensor: a layer whose max is far above its 99.99th percentile
    loses resolution to outliers, which is the first thing to look at when INT8 quality drops.
    """
    stats: dict[str, dict[str, float]] = {}

    def hook(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def record(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            s = stats.setdefault(name, {"min": float("inf"), "max": float("-inf"), "p9999_abs": 0.0})
            s["min"] = min(s["min"], float(out.min()))
            s["max"] = max(s["max"], float(out.max()))
            s["p9999_abs"] = max(s["p9999_abs"], float(torch.quantile(out.abs().flatten()[:1_000_000], 0.9999)))

        return record

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())
              and not isinstance(m, nn.Identity)]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        model.eval()
        model(torch.from_numpy(frames))
    finally:
        for h in handles:
            h.remove()
    return stats


def quantize_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], QuantizeResult]:
    cfg = ctx.recipe.quantize
    model, spec = load_model(ctx.model_dir())
    frames = calibration_frames(ctx, cfg.calibration_frames, cfg.calibration_selection)
    calibration = folder / "calibration.npy"
    np.save(calibration, frames)
    model_dir, qat_metrics, learned = ctx.model_dir(), dict[str, float](), None
    if cfg.qat is not None:
        model, spec, model_dir, qat_metrics, learned = _qat(ctx, folder, model, spec, frames)
    ranges = activation_ranges(model, frames)
    ranges_path = folder / "activation_ranges.json"
    ranges_path.write_text(json.dumps(ranges, indent=2))
    ctx.tracker.log_artifact(ranges_path)
    outlier_ratio = max((s["max"] - s["min"]) / max(2 * s["p9999_abs"], 1e-12) for s in ranges.values())
    metrics = {
        **quality(ctx, model),
        "params": count_params(model),
        "macs": count_macs(model, input_shape(ctx.recipe)),
        "size_kb": size_kb(model_dir / "model.pt"),
        "calibration_frames": float(len(frames)),
        "calibration_raw_mean": float(frames.mean()),
        "activation_outlier_ratio_max": float(outlier_ratio),
        **qat_metrics,
    }
    ctx.tracker.log_params({"quant_mode": cfg.mode, "quant_int8_io": cfg.int8_io,
                            "quant_variants": ",".join(cfg.built_variants()),
                            "quant_calibration_selection": cfg.calibration_selection,
                            "quant_ranges": cfg.ranges, "quant_weight_rounding": cfg.weight_rounding,
                            "quant_float_ops": ",".join(cfg.float_ops),
                            "quant_qat": cfg.qat is not None})
    ctx.tracker.log_metrics(metrics)
    return metrics, QuantizeResult(model=model_dir, calibration=calibration, activation_ranges=ranges_path,
                                   learned_ranges=learned)


def _qat(ctx: RunContext, folder: Path, model: nn.Module, spec: ModelSpec, frames: np.ndarray,
         ) -> tuple[nn.Module, ModelSpec, Path, dict[str, float], Path | None]:
    """``qat_finetune`` on the folded student; saves the fine-tuned float model (and its learned ranges)."""
    from compress.quantization.qat import qat_finetune  # torchao: loaded only when the recipe asks for QAT

    qat = ctx.recipe.quantize.qat
    assert qat is not None
    if not spec.folded:  # fake quantization must see the single convs TFLite will quantize
        model, _ = fold_model(model)
        spec = spec.model_copy(update={"folded": True})
    before = quality(ctx, model)["psnr"]
    result = qat_finetune(model, ctx.data.train_set, qat.train, calibration=torch.from_numpy(frames),
                          kd_weight=qat.kd_weight, freeze_fraction=qat.freeze_fraction, seed=ctx.recipe.seed + 5,
                          log=train_log(ctx), learn_ranges=qat.learn_ranges,
                          **resumable(ctx, folder, "checkpoint-qat"))
    model_dir = save_model(result.model, spec, folder / "model")
    ctx.tracker.log_artifact(model_dir, artifact_path="checkpoint")
    metrics = {"qat_psnr_before": before, "qat_final_loss": result.final_loss,
               "qat_fake_quant_psnr_start": float(result.fake_quant_psnr_start or 0.0),
               "qat_fake_quant_psnr_end": float(result.fake_quant_psnr_end or 0.0)}
    learned = None
    if result.learned_ranges:
        learned = folder / "learned_ranges.json"
        learned.write_text(json.dumps([r.to_json() for r in result.learned_ranges], indent=2))
        ctx.tracker.log_artifact(learned)
        metrics["qat_learned_ranges"] = float(len(result.learned_ranges))
    return result.model, spec, model_dir, metrics, learned

"""``quantize.x86``: ONNX Runtime QDQ models (an exported format) and Neural Compressor's PT2E INT8 of
the PyTorch model, scored like the TFLite variants; the drop is against the float model of the same
runtime (fp32 ONNX, PyTorch) and latency at ``export.latency_threads``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.quantization.inc_quant import inc_autotune
from compress.quantization.onnx_quant import quantize_onnx
from compress.runtime.latency import onnx_latency_ms, torch_latency_ms
from compress.runtime.parity import run_onnx
from compress.runtime.profile import size_kb
from recipes.context import RunContext
from recipes.metric_keys import drop_key, latency_key, psnr_key, size_key
from recipes.quant_gate import score_outputs
from recipes.stages.common import input_shape


def x86_variants(ctx: RunContext, model: nn.Module, onnx_path: Path, folder: Path, calibration: np.ndarray,
                 raws: np.ndarray, reference: np.ndarray, target: torch.Tensor,
                 float_metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, Path]]:
    """Metrics of every ``quantize.x86`` variant, and the files of those that are written to disk."""
    qcfg, threads = ctx.recipe.quantize, ctx.recipe.export.latency_threads
    metrics: dict[str, float] = {}
    paths: dict[str, Path] = {}
    for variant in qcfg.x86:
        if variant in ("onnx_int8", "onnx_int16"):
            path = quantize_onnx(onnx_path, folder / f"{onnx_path.stem}_{variant}.onnx", calibration,
                                 mode=variant.removeprefix("onnx_"))  # type: ignore[arg-type]
            metrics.update(score_outputs(run_onnx(path, raws), variant, reference, target))
            metrics[size_key(variant)] = size_kb(path)
            metrics[latency_key(variant, threads)] = onnx_latency_ms(path, num_threads=threads)["median_ms"]
            metrics[drop_key(variant)] = float_metrics[psnr_key("onnx")] - metrics[psnr_key(variant)]
            paths[variant] = path
            continue
        pairs = list(zip(torch.from_numpy(raws), target))
        result = inc_autotune(model, torch.from_numpy(calibration), pairs,
                              max_drop_db=qcfg.gate.drop_budget(variant), max_trials=qcfg.inc_max_trials)
        with torch.no_grad():
            out = result.model(torch.from_numpy(raws)).numpy()
        metrics.update(score_outputs(out, variant, reference, target))
        metrics[drop_key(variant)] = float_metrics["psnr_pytorch"] - metrics[psnr_key(variant)]
        metrics["inc_trials"] = float(len(result.trials))
        shape = input_shape(ctx.recipe)
        metrics[latency_key(variant, threads)] = torch_latency_ms(result.model, shape, threads)["median_ms"]
        metrics[latency_key("pytorch", threads)] = torch_latency_ms(model, shape, threads)["median_ms"]
        config = folder / "inc_int8_config.json"
        config.write_text(json.dumps({"config": result.config, "trials": result.trials}, indent=2, default=str))
        ctx.tracker.log_params({"inc_int8_" + k: v for k, v in result.config.items()})
        ctx.tracker.log_artifact(config, artifact_path="x86")
    return metrics, paths

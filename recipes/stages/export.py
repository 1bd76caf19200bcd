"""Export stage: ONNX + every TFLite variant, each scored and gated (``recipes.quant_gate``).

fp32 is always built (the reference for every PSNR drop); ``quantize.mode`` is the variant the bundle
ships and ``quantize.variants`` are built alongside.  With ``quantize.selective`` the int8 variant
comes from the selective-precision search (``compress.quantization.selective``); with
``quantize.x86`` the ONNX Runtime / Neural Compressor variants are scored too (``export_x86``).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.checkpoint import load_model
from compress.export.gpu_rewrites import rewrite_expand_for_gpu
from compress.export.graph_rewrites import rewrite_for_xnnpack_int8
from compress.export.onnx_export import export_onnx
from compress.export.tflite import ExtraBuild, convert_onnx_to_tflite
from compress.export.tflite_inspect import assert_builtin_only, tflite_io_details, tflite_ops
from compress.fold import fold_model
from compress.quantization.learned_ranges import LearnedRange, LearnedRangeMatcher
from compress.quantization.ranges import RangeSetting, norm_stats_advice
from compress.quantization.selective import SelectivePrecision, selective_markdown
from compress.quantization.weight_rounding import adaround, bias_correct
from compress.runtime.latency import onnx_latency_ms, tflite_latency_ms
from compress.runtime.parity import run_onnx
from compress.runtime.profile import count_macs, count_params, size_kb
from distill.metrics import psnr, psnr_db, ssim
from distill.progress import tqdm
from recipes.context import RunContext, StageError
from recipes.metric_keys import drop_key, latency_key, parity_key, psnr_key, size_key, ssim_key, tflite_format
from recipes.quant_gate import gate_failures, score_tflite, tflite_psnr
from recipes.results import ExportResult, QuantizeResult
from recipes.stages.common import input_shape
from recipes.stages.export_deploy import deployment
from recipes.stages.export_x86 import x86_variants


@dataclass
class HeldOut:
    """The held-out crops every variant is scored on, and the PyTorch model's output on them."""

    raws: np.ndarray
    target: torch.Tensor
    reference: np.ndarray


def held_out(ctx: RunContext, model: nn.Module) -> HeldOut:
    raws, rgbs = ctx.eval_crops()
    with torch.no_grad():
        reference = model(torch.from_numpy(raws)).numpy()
    return HeldOut(raws, torch.from_numpy(rgbs), reference)


def _rounded_int8_weights(ctx: RunContext, model: nn.Module, onnx_path: Path, folder: Path,
                          calibration: np.ndarray) -> Path:
    """The ONNX file of the weights the int8 variant quantizes: ``onnx_path`` itself, or with
    ``quantize.weight_rounding`` a copy of the model whose biases (bias correction) or weights (AdaRound, snapped
    onto TFLite's per-channel grid) are set on the calibration frames.  The float variants keep the model's own
    weights, so the int8 drop is still measured against them."""
    method = ctx.recipe.quantize.weight_rounding
    if method == "none":
        return onnx_path
    frames = torch.from_numpy(calibration)
    rounded = bias_correct(model, frames) if method == "bias_correction" else adaround(model, frames,
                                                                                      seed=ctx.recipe.seed)
    return export_onnx(rounded, folder / f"{onnx_path.stem}_{method}.onnx", input_shape(ctx.recipe))


def _xnnpack_int8_source(onnx_path: Path, folder: Path) -> tuple[Path, dict[str, int]]:
    """The ONNX file the int8 variant converts from: a copy with the ops XNNPACK leaves out of INT8
    rewritten exactly (``compress.export.graph_rewrites``), or ``onnx_path`` itself when nothing needs it
    (then one onnx2tf run builds every variant).  fp32 and the other variants keep the original graph:
    the rewrite costs them 10-20 % in float."""
    copy_path = folder / f"{onnx_path.stem}_xnnpack_int8.onnx"
    shutil.copyfile(onnx_path, copy_path)
    counts = rewrite_for_xnnpack_int8(copy_path)
    if not counts:
        copy_path.unlink()
        return onnx_path, {}
    return copy_path, counts


def _gpu_float_source(onnx_path: Path, folder: Path) -> tuple[Path, int]:
    """The ONNX file the float variants convert from: a copy (same file name, own folder) with broadcast
    ``Expand`` ops written as ``Add`` of zeros, which the GPU delegate takes (``compress.export.gpu_rewrites``:
    bit-identical TFLite outputs), or ``onnx_path`` itself when the graph has none.  The int8 variant keeps
    its own source (XNNPACK splits the rewritten int8 graph in two) unless ``export.require`` has gpu."""
    copy_path = folder / "gpu" / onnx_path.name
    copy_path.parent.mkdir(exist_ok=True)
    shutil.copyfile(onnx_path, copy_path)
    count = rewrite_expand_for_gpu(copy_path)
    if not count:
        shutil.rmtree(copy_path.parent)
        return onnx_path, 0
    return copy_path, count


def _learned_ranges(ctx: RunContext) -> LearnedRangeMatcher | None:
    """QAT's trained ranges (quantize stage), matched to the calibrated TFLite tensors during conversion."""
    path = ctx.result("quantize", QuantizeResult).learned_ranges
    if path is None:
        return None
    return LearnedRangeMatcher(LearnedRange(**item) for item in json.loads(Path(path).read_text()))


def _convert(ctx: RunContext, model: nn.Module, onnx_path: Path, folder: Path, data: HeldOut,
             calibration: np.ndarray, bar: tqdm) -> tuple[dict[str, Path], SelectivePrecision | None, dict[str, int],
                                                           int, RangeSetting]:
    """Every TFLite variant from one onnx2tf run (two when the int8 variant converts from another graph than
    the float ones: the XNNPACK rewrite or weight rounding for int8, the GPU rewrite for the rest)."""
    qcfg, threads = ctx.recipe.quantize, ctx.recipe.export.latency_threads
    variants = qcfg.built_variants()
    selective = None
    modes = [v for v in variants if v != "fp32"]
    learned = _learned_ranges(ctx)
    # always through ispdc's range setting, min/max included: TFLite's own calibrator logs some ranges too wide
    # (compress.quantization.ranges, module docstring)
    ranged = RangeSetting(qcfg.ranges, qcfg.range_percentile, float_ops=qcfg.float_ops, given=learned)
    int8_hook: ExtraBuild | None = ranged if "int8" in modes else None
    if int8_hook is not None and qcfg.selective is None:
        modes.remove("int8")
    if qcfg.selective is not None:
        def drop(candidate: Path, fp32: Path) -> float:
            return tflite_psnr(fp32, data.raws, data.target, threads) - tflite_psnr(candidate, data.raws,
                                                                                     data.target, threads)

        selective = SelectivePrecision(qcfg.selective.max_drop_db, qcfg.selective.max_float_layers, drop,
                                       probe=qcfg.selective.probe, prepare=ranged.prepare,
                                       float_ops=qcfg.float_ops)
        int8_hook = selective
        modes.remove("int8")
    int8_weights = _rounded_int8_weights(ctx, model, onnx_path, folder, calibration) if "int8" in variants \
        else onnx_path
    int8_source, rewrites = (_xnnpack_int8_source(int8_weights, folder) if qcfg.xnnpack_rewrite
                             else (int8_weights, {}))
    float_source, gpu_rewrites = (_gpu_float_source(onnx_path, folder) if ctx.recipe.export.gpu_rewrite
                                  else (onnx_path, 0))
    if gpu_rewrites and "gpu" in ctx.recipe.export.require:  # the GPU must take int8 too: rewrite it as well
        if int8_source == onnx_path:
            int8_source = float_source
        else:
            rewrite_expand_for_gpu(int8_source)
    separate_int8 = "int8" in variants and int8_source != float_source
    tflite = convert_onnx_to_tflite(float_source, folder / "tflite", calibration, int8_io=qcfg.int8_io,
                                    modes=[m for m in modes if not (separate_int8 and m == "int8")],
                                    extra=None if separate_int8 else int8_hook)
    if separate_int8:  # a second onnx2tf run on the int8 variant's own graph, for it alone
        bar.set_postfix_str(f"onnx2tf -> TFLite int8 (XNNPACK rewrites: {rewrites}, GPU rewrites: {gpu_rewrites})")
        built = convert_onnx_to_tflite(int8_source, folder / "tflite_int8", calibration, int8_io=qcfg.int8_io,
                                       modes=[] if int8_hook else ["int8"], extra=int8_hook)
        tflite["int8"] = Path(shutil.move(built["int8"], folder / "tflite" / built["int8"].name))
        shutil.rmtree(folder / "tflite_int8")
    tflite = {v: tflite[v] for v in variants}
    for path in tflite.values():
        assert_builtin_only(path)
    return tflite, selective, rewrites, gpu_rewrites, ranged


def _score(ctx: RunContext, onnx_path: Path, tflite: dict[str, Path], data: HeldOut,
           bar: tqdm) -> dict[str, float]:
    """Parity, quality, size and latency of the ONNX model and every TFLite variant."""
    qcfg, threads = ctx.recipe.quantize, ctx.recipe.export.latency_threads
    metrics: dict[str, float] = {}
    bar.set_postfix_str("parity + latency onnx")
    out = run_onnx(onnx_path, data.raws)
    pred = torch.from_numpy(np.clip(out, 0, 1))
    metrics.update({parity_key("onnx"): psnr_db(out, data.reference), psnr_key("onnx"): psnr(pred, data.target),
                    ssim_key("onnx"): ssim(pred, data.target), size_key("onnx"): size_kb(onnx_path)})
    metrics[latency_key("onnx", threads)] = onnx_latency_ms(onnx_path, num_threads=threads)["median_ms"]
    bar.update()
    for variant, path in tflite.items():
        fmt = tflite_format(variant)
        bar.set_postfix_str(f"parity + latency {fmt}")
        metrics.update(score_tflite(path, fmt, data.raws, data.reference, data.target, threads))
        for n in sorted({threads, 1, 2}) if variant == qcfg.mode else [threads]:
            metrics[latency_key(fmt, n)] = tflite_latency_ms(path, num_threads=n)["median_ms"]
        bar.update()
    fp32 = psnr_key(tflite_format("fp32"))
    for variant in tflite:
        if variant != "fp32":
            metrics[drop_key(tflite_format(variant))] = metrics[fp32] - metrics[psnr_key(tflite_format(variant))]
    metrics["psnr_pytorch"] = psnr(torch.from_numpy(np.clip(data.reference, 0, 1)), data.target)
    return metrics


def _check_gates(ctx: RunContext, metrics: dict[str, float], selective: SelectivePrecision | None,
                 tflite: dict[str, Path]) -> None:
    """Parity of the float exports, the selective-precision budget and every variant's quality gate; a failing
    int8 model with instance norm statistics in INT8 is told how to keep them in float."""
    cfg, qcfg = ctx.recipe.export, ctx.recipe.quantize
    for fmt in ("onnx", tflite_format("fp32")):
        if metrics[parity_key(fmt)] < cfg.parity_min_db:
            raise StageError(f"export: {fmt} parity {metrics[parity_key(fmt)]:.1f} dB is below the "
                             f"{cfg.parity_min_db:.0f} dB gate; no bundle is written")
    if selective is not None and selective.result is not None and not selective.result.reached:
        r = selective.result
        assert qcfg.selective is not None
        raise StageError(f"export: selective precision: int8 PSNR drop {r.drop_db:.3f} dB with "
                         f"{len(r.float_layers)} float layer(s) still exceeds quantize.selective.max_drop_db "
                         f"{r.max_drop_db:g} dB (limit quantize.selective.max_float_layers "
                         f"{qcfg.selective.max_float_layers}); no bundle is written")
    failures = gate_failures(metrics, qcfg, cfg.parity_min_db)
    advice = (norm_stats_advice(tflite_ops(tflite["int8"]), qcfg.float_ops, qcfg.ranges)
              if "int8" in tflite and any(f.startswith("int8 ") for f in failures) else None)
    if failures:
        raise StageError(f"export: {'; '.join(failures)}; no bundle is written" + (f" ({advice})" if advice else ""))


def _log_selective(ctx: RunContext, folder: Path, selective: SelectivePrecision) -> tuple[Path, dict[str, float]]:
    assert selective.result is not None
    result = selective.result
    path = folder / "selective.json"
    path.write_text(json.dumps(result.to_json(), indent=2))
    (folder / "selective.md").write_text(selective_markdown(result))
    for name in ("selective.json", "selective.md"):
        ctx.tracker.log_artifact(folder / name, artifact_path="selective")
    return path, {"selective_float_layers": float(len(result.float_layers)),
                  "selective_int8_drop_db_before": result.int8_drop_db}


def export_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], ExportResult]:
    qcfg = ctx.recipe.quantize
    variants = qcfg.built_variants()
    model, spec = load_model(ctx.model_dir())
    if not spec.folded:  # fold: disabled still ships single convs: folding is exact, branches only cost time
        model, _ = fold_model(model)
    data = held_out(ctx, model)
    bar = tqdm(total=3 + len(variants), desc="export", leave=False, dynamic_ncols=True)
    bar.set_postfix_str("ONNX")
    onnx_path = export_onnx(model, folder / "model.onnx", input_shape(ctx.recipe))
    bar.update()
    bar.set_postfix_str(f"onnx2tf -> TFLite {' + '.join(variants)}")
    calibration = np.load(ctx.result("quantize", QuantizeResult).calibration)
    tflite, selective, rewrites, gpu_rewrites, ranged = _convert(ctx, model, onnx_path, folder, data,
                                                                  calibration, bar)
    bar.update()
    metrics = _score(ctx, onnx_path, tflite, data, bar)
    metrics.update({f"xnnpack_rewrites_{op.lower()}": float(n) for op, n in rewrites.items()})
    if gpu_rewrites:
        metrics["gpu_rewrites_expand"] = float(gpu_rewrites)
    if "int8" in tflite:  # ranges TFLite's calibrator logged too wide, corrected in the shipped int8 model
        metrics["int8_calibrator_ranges_corrected"] = float(len(ranged.calibrator_overstated))
    x86: dict[str, Path] = {}
    if qcfg.x86:
        bar.set_postfix_str(f"x86: {', '.join(qcfg.x86)}")
        x86_metrics, x86 = x86_variants(ctx, model, onnx_path, folder, calibration, data.raws, data.reference,
                                        data.target, metrics)
        metrics.update(x86_metrics)
    bar.close()
    shipped = tflite_format(qcfg.mode)
    metrics["params"] = count_params(model)
    metrics["macs"] = count_macs(model, input_shape(ctx.recipe))
    metrics["size_kb"] = metrics[size_key(shipped)]
    metrics["psnr"], metrics["ssim"] = metrics[psnr_key(shipped)], metrics[ssim_key(shipped)]
    selective_path = None
    if selective is not None:
        selective_path, selective_metrics = _log_selective(ctx, folder, selective)
        metrics.update(selective_metrics)
    ctx.tracker.log_metrics(metrics)
    _check_gates(ctx, metrics, selective, tflite)
    deploy_metrics, frames, deploy_path = deployment(ctx, folder, model, tflite, data.raws, data.target, metrics,
                                                     calibration)  # logs its own metrics (before export.require)
    metrics.update(deploy_metrics)
    io_details = folder / "io_details.json"
    io_details.write_text(json.dumps({tflite_format(v): tflite_io_details(p) for v, p in tflite.items()}, indent=2))
    for path in (onnx_path, *tflite.values(), *x86.values(), io_details):
        ctx.tracker.log_artifact(path, artifact_path="exported")
    return metrics, ExportResult(onnx=onnx_path, tflite=tflite, shipped_variant=qcfg.mode, io_details=io_details,
                                 x86=x86, selective=selective_path, frame_tflite=frames, deployment=deploy_path)

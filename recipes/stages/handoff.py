"""Hand-off stage: the bundle an app team ships (``compress.bundle``), its card filled from the run."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from compress.bundle import card as model_card
from compress.bundle.write import golden_tolerance, write_bundle
from compress.checkpoint import load_model
from compress.runtime.parity import run_tflite
from distill.data.bayer import PACKED_ORDER, colour_offsets
from recipes.context import RunContext, git_sha
from recipes.loader import recipe_hash
from recipes.metric_keys import (
    LATENCY_PATTERN,
    drop_key,
    latency_key,
    parity_key,
    psnr_key,
    rmse_key,
    size_key,
    ssim_key,
    tflite_format,
)
from recipes.quant_gate import CHANNELS
from recipes.results import ExportResult, HandoffResult, QuantizeResult
from recipes.schema import Recipe


def quality_table(metrics: dict[str, float], variants: list[str], threads: int) -> dict[str, dict[str, Any]]:
    """Per built variant: PSNR/SSIM vs ground truth, parity vs PyTorch, drop vs fp32, size, latency."""
    table = {}
    for v in variants:
        fmt = tflite_format(v)
        table[fmt] = {
            "psnr": metrics[psnr_key(fmt)], "ssim": metrics[ssim_key(fmt)],
            "parity_psnr_db": metrics[parity_key(fmt)],
            "psnr_drop_db": metrics.get(drop_key(fmt), 0.0),
            "size_kb": metrics[size_key(fmt)], "latency_ms": metrics[latency_key(fmt, threads)],
            "rmse_rgb": [metrics[rmse_key(fmt, c)] for c in CHANNELS],
        }
    return table


def shipped_latency(metrics: dict[str, float], variant: str) -> dict[str, float]:
    """``{"1": ms, "2": ms, ...}``: the shipped model's median latency per thread count measured."""
    fmt = tflite_format(variant)
    found = {m["threads"]: v for k, v in metrics.items() if (m := LATENCY_PATTERN.match(k)) and m["fmt"] == fmt}
    return dict(sorted(found.items(), key=lambda kv: int(kv[0])))


def float_layers(export: ExportResult, variant: str) -> list[str]:
    """The layers selective precision kept in float (only the int8 variant has any)."""
    if variant != "int8" or export.selective is None:
        return []
    return list(json.loads(export.selective.read_text())["float_layers"])


def normalisation_text(recipe: Recipe) -> str:
    data = recipe.data
    if data.kind in ("zurich", "mai21"):
        return "raw / 1020 (10-bit sensor data, PyNET/MAI convention), clipped to [0, 1]"
    if data.kind == "paired":
        return f"(raw - {data.black_level:g}) / ({data.white_level:g} - {data.black_level:g}), clipped to [0, 1]"
    return "(raw - black) / (white - black), clipped to [0, 1] (embedded data is synthesised already normalised)"


def _range_method(ctx: RunContext) -> str:
    """``learned`` when QAT's trained ranges went into the TFLite model, else ``quantize.ranges``."""
    quantize = ctx.outcomes.get("quantize")
    if quantize is not None and isinstance(quantize.result, QuantizeResult) and quantize.result.learned_ranges:
        return "learned"
    return ctx.recipe.quantize.ranges


def deployment_sections(card: dict[str, Any], export: ExportResult, variant: str) -> dict[str, Path]:
    """Add ``delegates``, ``frame`` and ``recommendation`` to ``card`` from the export stage's
    ``deployment.json``; returns the extra model files the bundle ships (``model_frame.tflite``)."""
    if export.deployment is None:  # an export stage cached before the deployment report existed
        return {}
    report = json.loads(export.deployment.read_text())
    card["delegates"] = report["delegates"]
    frame = report.get("frame")
    latency = {fmt: m["latency_ms"] for fmt, m in card["quality"].items()}
    size = f"the {card['input_size']['packed_hw']} packed tile"
    extra: dict[str, Path] = {}
    if frame is not None:
        card["frame"] = {**frame, "variant": variant}
        latency, size = frame["latency_ms"], f"{frame['output_hw'][0]}x{frame['output_hw'][1]} output"
        extra[frame["file"]] = export.frame_tflite[variant]
    card["recommendation"] = model_card.recommendation_section(report["delegates"], latency, size)
    return extra


def handoff_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], HandoffResult]:
    recipe = ctx.recipe
    export = ctx.result("export", ExportResult)
    em = ctx.outcomes["export"].metrics
    variant = export.shipped_variant
    fmt = tflite_format(variant)
    model_path = export.shipped_tflite
    io = json.loads(export.io_details.read_text())[fmt]
    raws, _ = ctx.eval_crops()
    golden_in_nchw = raws[:1]
    golden_out = np.transpose(run_tflite(model_path, golden_in_nchw), (0, 2, 3, 1))
    golden_in = np.transpose(golden_in_nchw, (0, 2, 3, 1))
    model, spec = load_model(ctx.model_dir())
    offsets = colour_offsets(recipe.data.pattern)
    inp, out = io["inputs"][0], io["outputs"][0]
    threads = recipe.export.latency_threads
    layers = float_layers(export, variant)
    built = [v for v in recipe.quantize.built_variants() if v in export.tflite]
    frames = int(ctx.outcomes["quantize"].metrics.get("calibration_frames", recipe.quantize.calibration_frames))
    card = {
        "name": recipe.bundle_name,
        "description": recipe.description or f"{spec.name} from recipe {recipe.name}",
        "format": "tflite",
        "variant": variant,
        "quantization": model_card.describe_variant(variant, recipe.quantize.int8_io, layers),
        "precision": model_card.precision_section(variant, recipe.quantize.int8_io, layers),
        "input_size": model_card.input_size_section(model.eval(), recipe.export.input_size),
        "calibration": model_card.calibration_section(
            frames, recipe.quantize.calibration_selection, recipe.export.input_size, recipe.data.splits()[0],
            recipe.data.kind, ranges=_range_method(ctx), weight_rounding=recipe.quantize.weight_rounding,
            float_ops=recipe.quantize.float_ops),
        "model": {"family": spec.family, "name": spec.name, "config": spec.config, "widths": spec.widths,
                  "folded": True},  # the export stage folds whatever the fold stage did not
        "input": {
            "name": inp["name"], "shape": inp["shape"], "dtype": inp["dtype"], "layout": "NHWC",
            "scale": inp.get("scale"), "zero_point": inp.get("zero_point"),
            "channel_order": list(PACKED_ORDER), "bayer_pattern": recipe.data.pattern,
            "packing": {c: f"{dy}::2, {dx}::2" for c, (dy, dx) in offsets.items()},
            "normalisation": normalisation_text(recipe),
            "range": [0.0, 1.0],
        },
        "output": {"name": out["name"], "shape": out["shape"], "dtype": out["dtype"], "layout": "NHWC",
                   "scale": out.get("scale"), "zero_point": out.get("zero_point"), "colour": "sRGB",
                   "range": [0.0, 1.0]},
        "quality": quality_table(em, built, threads),
        "evaluation": f"{len(ctx.data.eval_pairs)} held-out images ({recipe.data.kind} data), centre crops "
                      f"of {recipe.export.input_size[0]}x{recipe.export.input_size[1]} packed pixels",
        "cost": {"size_kb": em[size_key(fmt)], "params": int(em["params"]), "macs": int(em["macs"]),
                 "latency_ms": em[latency_key(fmt, threads)], "latency_threads": threads,
                 "latency_ms_by_threads": shipped_latency(em, variant)},
        "golden": {"input": "golden_input.npy", "output": "golden_output.npy",
                   "tolerance": golden_tolerance(out)},
        "provenance": {
            "recipe": recipe.name, "recipe_file": str(ctx.recipe_path), "recipe_hash": recipe_hash(recipe),
            "git_sha": git_sha(), "mlflow_tracking_uri": ctx.tracker.tracking_uri,
            "mlflow_run_id": ctx.tracker.parent_run_id, "export_run_id": ctx.outcomes["export"].run_id,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    extra = deployment_sections(card, export, variant)
    bundle = write_bundle(ctx.workdir / "handoff" / recipe.bundle_name, model_path, card, golden_in, golden_out,
                          extra_models=extra)
    ctx.tracker.log_artifact(bundle, artifact_path="handoff")
    metrics = {"psnr": em[psnr_key(fmt)], "ssim": em[ssim_key(fmt)], "params": em["params"],
               "macs": em["macs"], "size_kb": em[size_key(fmt)]}
    ctx.tracker.log_metrics(metrics)
    return metrics, HandoffResult(bundle=bundle)

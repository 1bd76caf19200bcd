"""Model-card sections about quantization, quality and input size, built from the export stage's results.

``recipes.stages.handoff_stage`` assembles the card; these functions turn the logged metrics and the
recipe into the parts an app team needs to feed the model and to judge the shipped variant against
the others that were built.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from recipes.quant_gate import describe_variant
from recipes.schema import Recipe

PRECISION = {
    "fp32": "all float32",
    "float16": "float16 weights, float32 activations everywhere",
    "dynamic": "int8 weights (tensors >= 1024 elements), float32 activations",
    "int16x8": "int16 activations and int8 weights; ops without a 16x8 kernel run in float",
}


def quality_table(metrics: dict[str, float], variants: list[str], threads: int) -> dict[str, dict[str, float]]:
    """Per built variant: PSNR/SSIM vs ground truth, parity vs PyTorch, drop vs fp32, size, latency."""
    table = {}
    for v in variants:
        fmt = f"tflite_{v}"
        table[fmt] = {
            "psnr": metrics[f"psnr_{fmt}"], "ssim": metrics[f"ssim_{fmt}"],
            "parity_psnr_db": metrics[f"parity_psnr_db_{fmt}"],
            "psnr_drop_db": metrics.get(f"psnr_drop_db_{fmt}", 0.0),
            "size_kb": metrics[f"size_kb_{fmt}"], "latency_ms": metrics[f"latency_ms_{fmt}_{threads}t"],
            "rmse_rgb": [metrics[f"rmse_{fmt}_{c}"] for c in "rgb"],
        }
    return table


def shipped_latency(metrics: dict[str, float], variant: str) -> dict[str, float]:
    """``{"1": ms, "2": ms, ...}``: the shipped model's median latency per thread count measured."""
    prefix = f"latency_ms_tflite_{variant}_"
    found = {k[len(prefix) : -1]: v for k, v in metrics.items() if k.startswith(prefix) and k.endswith("t")}
    return dict(sorted(found.items(), key=lambda kv: int(kv[0])))


def float_layers(export_outputs: dict[str, str], variant: str) -> list[str]:
    """The layers selective precision kept in float (only the int8 variant has any)."""
    path = export_outputs.get("selective")
    if variant != "int8" or not path:
        return []
    return list(json.loads(Path(path).read_text())["float_layers"])


def precision_section(variant: str, int8_io: bool, layers: list[str]) -> dict[str, Any]:
    if variant == "int8":
        summary = (f"int8 except {len(layers)} float layer(s) chosen by selective precision" if layers
                   else "all int8")
    else:
        summary = PRECISION[variant]
    return {"variant": variant, "description": describe_variant(variant, int8_io, layers), "summary": summary,
            "float_layers": layers}


def input_size_section(model: nn.Module, input_hw: tuple[int, int]) -> dict[str, Any]:
    """The fixed input size and how to cover larger images: tiles of that size, overlapping by the
    receptive-field margin (measured on the PyTorch model), so tiled output equals untiled output."""
    from compress.tiling import DEFAULT_BLEND, UnboundedReceptiveFieldError, receptive_field_margin

    h, w = input_hw
    probe = max(64, min(h, w) // 32 * 32)  # a multiple of 32: every model in the zoo accepts it
    try:
        margin: int | None = receptive_field_margin(model, size=probe)
    except UnboundedReceptiveFieldError:
        margin = None
    section: dict[str, Any] = {
        "packed_hw": [h, w], "raw_hw": [2 * h, 2 * w], "output_hw": [2 * h, 2 * w],
        "rule": f"the model takes exactly {h}x{w} packed pixels (a {2 * h}x{2 * w} Bayer crop at even offsets, "
                "so the CFA order holds); pad smaller images by reflection, tile larger ones",
        "tile_packed_hw": [h, w], "receptive_field_margin": margin, "blend": DEFAULT_BLEND,
    }
    if margin is None:
        section["overlap"] = min(h, w) // 4
        section["tiling"] = ("the model has global context (its receptive field covers the whole input): tiles "
                             "cannot match a single pass exactly; overlap a quarter tile and blend")
    elif 2 * margin + DEFAULT_BLEND >= min(h, w):
        section["overlap"] = margin
        section["tiling"] = (f"the receptive-field margin ({margin} packed pixels per side) leaves no interior in a "
                             f"{h}x{w} tile: export a larger input size before tiling")
    else:
        section["overlap"] = margin
        section["tiling"] = (f"tiles of {h}x{w} packed pixels overlapping by {margin} packed pixels of context per "
                             f"side (outputs there discarded) plus {DEFAULT_BLEND} blended: identical to one pass")
    return section


def calibration_section(recipe: Recipe, frames: int) -> dict[str, Any]:
    train_split, _ = recipe.data.splits()
    h, w = recipe.export.input_size
    return {"frames": frames, "selection": recipe.quantize.calibration_selection,
            "source": f"RAW crops of {h}x{w} packed pixels from the training split {train_split!r} of the "
                      f"{recipe.data.kind} data (never the held-out images)"}

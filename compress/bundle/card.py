"""Model-card sections about quantization, input size and calibration, from plain values.

The hand-off stage (``recipes.stages.handoff``) assembles the card from the run's results; these
functions write the parts an app team needs to feed the model and to know what precision it runs at.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from compress.runtime.tiling import DEFAULT_BLEND, UnboundedReceptiveFieldError
from compress.runtime.tiling_torch import receptive_field_margin

PRECISION = {
    "fp32": "all float32",
    "float16": "float16 weights, float32 activations everywhere",
    "dynamic": "int8 weights (tensors >= 1024 elements), float32 activations",
    "int16x8": "int16 activations and int8 weights; ops without a 16x8 kernel run in float",
}


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


RANGE_METHODS = {"minmax": "each tensor's min/max over the calibration frames, measured on the float model",
                 "calibrator": "min/max as TFLite's calibrator logs it (the stock converter)",
                 "percentile": "each tensor clipped to a percentile of its calibration values",
                 "mse": "each tensor clipped to its least-squared-error range on the calibration frames",
                 "learned": "learned by quantization-aware training (LSQ+); tensors it does not cover as "
                            "quantize.ranges sets them"}
WEIGHT_METHODS = {"none": "per-channel symmetric, rounded to nearest",
                  "bias_correction": "per-channel symmetric, rounded to nearest, biases corrected for the "
                                     "mean shift of the rounding",
                  "adaround": "per-channel symmetric, rounded by AdaRound on the calibration frames"}


def calibration_section(frames: int, selection: str, input_hw: tuple[int, int], split: str, data_kind: str,
                        ranges: str = "minmax", weight_rounding: str = "none",
                        float_ops: Sequence[str] = ()) -> dict[str, Any]:
    """Where the INT8 ranges came from: how many RAW crops, of what size, from which split, and how the
    activation ranges and the weight rounding were set (so an app team can rebuild the model)."""
    h, w = input_hw
    section: dict[str, Any] = {
        "frames": frames, "selection": selection,
        "source": f"RAW crops of {h}x{w} packed pixels from the training split {split!r} of the "
                  f"{data_kind} data (never the held-out images)",
        "activation_ranges": ranges, "activation_ranges_method": RANGE_METHODS[ranges],
        "weight_rounding": weight_rounding, "weight_rounding_method": WEIGHT_METHODS[weight_rounding]}
    if float_ops:
        section["float_ops"] = list(float_ops)
    return section


GPU_PREFERENCE = ("float16", "fp32", "int8", "dynamic", "int16x8")
"""The GPU delegate computes in float16/float32: a float16 model is its native form; quantized weights
are dequantized at load, so int8 saves file size there, not time."""


def recommendation_section(delegates: dict[str, dict[str, Any]], latency_ms: dict[str, float],
                           latency_size: str) -> dict[str, Any]:
    """Which variant to use on which runtime, from the measurements, each with its reason: on the CPU the
    fastest measured, on the GPU delegate the first compatible of ``GPU_PREFERENCE``, on NPUs int8.

    ``delegates`` is the card's per-variant report (``tflite_<variant>`` keys), ``latency_ms`` the median
    latency per variant on the build machine at ``latency_size`` (the frame size when the recipe sets one).
    """
    def variant(fmt: str) -> str:
        return fmt.removeprefix("tflite_")

    note = "latencies are from the build machine's CPU: measure on the target device"
    whole = [f for f, r in delegates.items() if r["xnnpack"]["whole_graph"]]
    pool = [f for f in delegates if f in latency_ms]  # the timings include any hand-over to builtin kernels
    cpu: dict[str, Any] = {"variant": None, "reason": "no latency measured"}
    if pool:
        best = min(pool, key=lambda f: latency_ms[f])
        by_speed = sorted(latency_ms, key=lambda f: latency_ms[f])
        others = ", ".join(f"{variant(f)} {latency_ms[f]:.1f} ms" for f in by_speed if f != best)
        cpu = {"variant": variant(best),
               "reason": f"fastest at {latency_size} on XNNPACK: {latency_ms[best]:.1f} ms (others: {others}); "
                         + ("XNNPACK takes its whole graph" if best in whole else
                            f"XNNPACK leaves {sorted(set(delegates[best]['xnnpack']['undelegated']))} to the builtin "
                            "kernels (included in the time)")}
    compatible = [f for f, r in delegates.items() if r["gpu"]["compatible"]]
    ranked = sorted(compatible, key=lambda f: GPU_PREFERENCE.index(variant(f)) if variant(f) in GPU_PREFERENCE
                    else len(GPU_PREFERENCE))
    gpu: dict[str, Any]
    npu: dict[str, Any]
    if ranked:
        gpu = {"variant": variant(ranked[0]),
               "reason": f"GPU-delegate compatible ({', '.join(variant(f) for f in ranked)}); the delegate computes "
                         "in float16/float32, so the float16 model is its native form and quantized weights only "
                         "save file size there"}
    else:
        flagged = {variant(f): [x["op"] for x in r["gpu"]["flagged"]] for f, r in delegates.items()}
        gpu = {"variant": None, "reason": f"no variant passes the GPU delegate's op rules: {flagged}"}
    if "tflite_int8" in delegates:
        b = delegates["tflite_int8"]["builtin"]
        npu = {"variant": "int8",
               "reason": f"integer-only paths (NPU delegates such as MediaTek Neuron) need all-int8; on TFLite's "
                         f"reference kernels, their stand-in here, int8 reaches {b['psnr']:.2f} dB "
                         f"({b['psnr_drop_db']:+.3f} dB vs XNNPACK): validate on the device"}
    else:
        npu = {"variant": None, "reason": "no int8 variant built: add int8 to quantize.variants for NPU paths"}
    return {"cpu_xnnpack": cpu, "gpu_delegate": gpu, "npu_int8": npu, "note": note}

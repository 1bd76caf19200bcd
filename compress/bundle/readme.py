"""The bundle's README.md, rendered from the model card: what an app team reads first.

Kept apart from writing the bundle (``compress.bundle.write``) so each section of the card has one
place that turns it into prose; cards of older bundles (fewer fields) still render.
"""
from __future__ import annotations

from typing import Any

from compress.bundle.readme_run import android_lines, hash_lines, run_lines


def _quality_lines(q: dict[str, dict[str, Any]]) -> list[str]:
    """The per-variant table; cards without the drop/size/latency columns (older bundles) still render."""
    full = all({"psnr_drop_db", "size_kb", "latency_ms"} <= set(m) for m in q.values())
    if not full:
        lines = ["| model | PSNR dB | SSIM | parity vs PyTorch dB |", "|---|---|---|---|"]
        return lines + [f"| {v} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['parity_psnr_db']:.2f} |"
                        for v, m in q.items()]
    lines = ["| model | PSNR dB | SSIM | parity vs PyTorch dB | drop vs fp32 dB | size KB | latency ms |",
             "|---|---|---|---|---|---|---|"]
    return lines + [f"| {v} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['parity_psnr_db']:.2f} | {m['psnr_drop_db']:.3f} "
                    f"| {m['size_kb']:.1f} | {m['latency_ms']:.2f} |" for v, m in q.items()]


def _feeding_lines(card: dict[str, Any]) -> list[str]:
    """Input size rules, precision per layer and calibration, when the card has them."""
    lines: list[str] = []
    size = card.get("input_size")
    if size:
        lines += ["## Input size", f"- {size['rule']}",
                  f"- larger images: {size['tiling']} (tile {size['tile_packed_hw']}, overlap {size['overlap']}, "
                  f"blend {size['blend']} packed pixels)", ""]
    precision = card.get("precision")
    if precision:
        lines += ["## Precision", f"- {precision['description']}", f"- per layer: {precision['summary']}"]
        lines += [f"  - float: `{name}`" for name in precision.get("float_layers", [])]
        lines.append("")
    calibration = card.get("calibration")
    if calibration:
        lines += ["## Calibration", f"- {calibration['frames']} frames, selection {calibration['selection']}: "
                  f"{calibration['source']}"]
        if "activation_ranges" in calibration:  # cards written before the range methods lack these
            lines += [f"- activation ranges: {calibration['activation_ranges_method']}",
                      f"- weights: {calibration['weight_rounding_method']}"]
        lines += [f"- kept in float: {', '.join(calibration['float_ops'])}"] if calibration.get("float_ops") else []
        lines.append("")
    return lines


def _deployment_lines(card: dict[str, Any]) -> list[str]:
    """Frame-size figures, the delegate report and the recommendation, when the card has them."""
    lines: list[str] = []
    frame = card.get("frame")
    if frame:
        (h, w), (ph, pw) = frame["output_hw"], frame["packed_hw"]
        how = ("rewriting the tile model's shapes: same weights and quantization" if frame["built_by"] == "resize"
               else "converting the ONNX model exported at this size")
        lines += [f"## At the frame size ({h}x{w} output, packed input {ph}x{pw})",
                  f"`{frame['file']}` is the shipped variant at this size (built by {how}). "
                  f"Quality: {frame['evaluation']}. Latency: the interpreter's default delegates (XNNPACK), "
                  f"{frame['threads']} thread(s), median of the runs shown, on the build machine (indicative "
                  "only).", "",
                  "| model | PSNR dB | SSIM | parity vs PyTorch dB | latency ms (runs) |", "|---|---|---|---|---|"]
        ms, runs = frame["latency_ms"], frame["latency_runs"]
        lines += [f"| {fmt} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['parity_psnr_db']:.2f} | {ms[fmt]:.1f} "
                  f"({runs[fmt]}) |" for fmt, m in frame["quality"].items()]
        lines.append("")
    delegates = card.get("delegates")
    if delegates:
        lines += ["## Runtimes and delegates",
                  "GPU: the TFLite GPU delegate's op rules (TFLite's analyzer plus `gpu_compatibility.cc`'s rules, "
                  "offline). XNNPACK: partitions on the build machine's CPU. Builtin: TFLite's reference kernels, "
                  "the stand-in for NPU integer paths.", "",
                  "| model | GPU delegate | XNNPACK partitions | ops left to builtin kernels | builtin PSNR dB "
                  "(drop vs XNNPACK) |", "|---|---|---|---|---|"]
        for fmt, r in delegates.items():
            gpu = "yes" if r["gpu"]["compatible"] else "no: " + "; ".join(
                f"{f['op']} ({f['reason']})" for f in r["gpu"]["flagged"])
            left = ", ".join(sorted(set(r["xnnpack"]["undelegated"]))) or "none"
            lines.append(f"| {fmt} | {gpu} | {r['xnnpack']['partitions']} | {left} | {r['builtin']['psnr']:.2f} "
                         f"({r['builtin']['psnr_drop_db']:+.3f}) |")
        lines.append("")
    rec = card.get("recommendation")
    if rec:
        names = {"cpu_xnnpack": "CPU (XNNPACK)", "gpu_delegate": "GPU delegate", "npu_int8": "NPU / integer-only"}
        lines += ["## Which variant on which runtime"]
        lines += [f"- {names[k]}: **{rec[k]['variant'] or 'none'}**: {rec[k]['reason']}" for k in names if k in rec]
        lines += [f"- note: {rec['note']}", ""]
    return lines


def render_readme(card: dict[str, Any]) -> str:
    inp, out, q = card["input"], card["output"], card["quality"]
    quant = lambda t: f"scale {t['scale']:.8g}, zero point {t['zero_point']}" if t.get("scale") else "not quantized"  # noqa: E731
    lines = [
        f"# {card['name']}: RAW Bayer -> sRGB ({card['quantization']})",
        "",
        f"{card['description']}",
        "",
        *run_lines(card),
        "## Input",
        f"- tensor `{inp['name']}`: shape {inp['shape']} ({inp['layout']}), dtype {inp['dtype']}, {quant(inp)}",
        f"- packed Bayer, channels {inp['channel_order']} from a {inp['bayer_pattern']} sensor "
        f"(B = raw[{inp['packing']['B']}], ...; see model_card.json)",
        f"- normalisation: {inp['normalisation']}; values in {inp['range']}",
        "",
        "## Output",
        f"- tensor `{out['name']}`: shape {out['shape']} (NHWC, sRGB), dtype {out['dtype']}, {quant(out)}",
        f"- range {out['range']} (multiply by 255 for 8-bit)",
        "",
        *android_lines(card),
        *_feeding_lines(card),
        "## Quality and cost",
        f"Evaluated on {card['evaluation']}; the shipped model is "
        f"`tflite_{card.get('variant', 'int8')}`, the others were built and gated alongside.",
        "",
        *_quality_lines(q),
    ]
    cost = card["cost"]
    by_threads = cost.get("latency_ms_by_threads") or {str(cost["latency_threads"]): cost["latency_ms"]}
    lines += [
        "",
        f"- file size {cost['size_kb']:.1f} KB, {cost['params']:,} parameters, {cost['macs'] / 1e6:.1f} M MACs "
        f"per inference at this input size",
        "- latency on the build machine (XNNPACK, median; indicative only: measure on the target device): "
        + ", ".join(f"{ms:.2f} ms with {n} thread(s)" for n, ms in by_threads.items()),
        *hash_lines(card),
        "",
        *_deployment_lines(card),
        "## Provenance",
        *[f"- {k}: {v}" for k, v in card["provenance"].items()],
        "",
    ]
    return "\n".join(lines)

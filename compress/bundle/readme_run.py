"""The README sections about running the bundle: ``run_model.py``, the hashes, an Android (Kotlin) sketch.

Kept beside ``compress.bundle.readme`` (the card's prose) because these follow the runtime side
(``reference_runner.py``'s options, the hash refusal), not the card's measurements.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def run_lines(card: dict[str, Any]) -> list[str]:
    """``## Run it``: the golden check, any RAW in, the hash refusal."""
    frame = (card.get("frame") or {}).get("file")
    return [
        "## Run it",
        "```",
        "pip install numpy ai-edge-litert          # pillow too, to read PNG/TIFF mosaics",
        "python run_model.py                       # golden check: must print OK",
        "python run_model.py --input bayer.pgm --pattern GRBG --black 64 --white 1023 --output photo.png",
        "python run_model.py --input packed.npy --black 64 --white 1023 --output photo.png",
        "```",
        "- input: a Bayer mosaic (16-bit PNG / TIFF / PGM, .npy 2-D: give `--pattern --black --white`) or packed "
        "RAW `.npy` / `.npz` (H x W x 4 or 4 x H x W; `--channel-order`, default B,Gb,R,Gr as PyNET/MAI store it; "
        "an .npz may carry `channel_order`, `black_level`, `white_level`, `cfa_pattern`; float data in [0, 1] needs "
        "no levels). Output: .png / .ppm 8-bit sRGB, or .npy float32.",
        "- any size: tiles of the model's input, overlapping by the card's `input_size.overlap`, blended; "
        + (f"`{frame}` is used when the packed image is at least its input size (`--model tile|frame` "
           "overrides). " if frame else "")
        + "`ispdc process` runs the same code (`ispdc_tiling.py`, `ispdc_rawio.py`, `ispdc_bayer.py`): same input, "
        "same PNG.",
        "- a model file whose SHA-256 is not the one below is refused (exit 2); `--allow-modified-model` runs it "
        "with a warning. `ispdc verify` checks every card field against the model and the golden files.",
        "",
    ]


def hash_lines(card: dict[str, Any]) -> list[str]:
    """One ``<file> SHA-256: `hex` `` line per model file (``ispdc verify`` compares them with the card)."""
    hashes = dict(card.get("files_sha256") or {})
    if "model.tflite" not in hashes:
        hashes["model.tflite"] = card.get("model_sha256", "not recorded")
    return [f"- {name} SHA-256: `{digest}`" for name, digest in hashes.items()]


def android_lines(card: dict[str, Any]) -> list[str]:
    """A short Kotlin sketch: GPU delegate when the device supports it, else XNNPACK; the card's tensors."""
    inp, out = card["input"], card["output"]
    int8_in = inp.get("dtype") in ("int8", "uint8") and inp.get("scale")
    feed = (f"    val q = (v / {inp['scale']:.8g}f + {inp['zero_point']}).roundToInt().coerceIn(-128, 127)\n"
            "    input.put(q.toByte())" if int8_in else "    input.putFloat(v)")
    size = 1 if int8_in else 4
    read = (f"(output.get(i).toInt() - {out['zero_point']}) * {out['scale']:.8g}f" if out.get("scale")
            else "output.getFloat(i * 4)")
    return [
        "## Android (Kotlin) sketch: not run here",
        "GPU delegate when the device supports this model, else the CPU with XNNPACK; feed the card's tensors "
        "(`org.tensorflow:tensorflow-lite` + `tensorflow-lite-gpu`). Untested in this toolkit: check the output "
        "against golden_output.npy on the device.",
        "```kotlin",
        "val options = Interpreter.Options()",
        "val compat = CompatibilityList()",
        "if (compat.isDelegateSupportedOnThisDevice) {",
        "    options.addDelegate(GpuDelegate(compat.bestOptionsForThisDevice))",
        "} else {",
        "    options.setUseXNNPACK(true); options.setNumThreads(2)",
        "}",
        "val interpreter = Interpreter(FileUtil.loadMappedFile(context, \"model.tflite\"), options)",
        f"// input `{inp['name']}` {inp['shape']} {inp['dtype']}: packed RAW, channels {inp['channel_order']}, "
        "values (raw - black) / (white - black) in [0, 1]",
        f"val input = ByteBuffer.allocateDirect({int(np.prod(inp['shape'])) * size}).order(ByteOrder.nativeOrder())",
        "for (v in packedRaw) {  // FloatArray in NHWC order",
        feed,
        "}",
        f"val output = ByteBuffer.allocateDirect({int(np.prod(out['shape'])) * (1 if out.get('scale') else 4)})"
        ".order(ByteOrder.nativeOrder())",
        "interpreter.run(input.rewind(), output)",
        f"// output `{out['name']}` {out['shape']} {out['dtype']}: sRGB in [0, 1] = {read}",
        "```",
        "",
    ]

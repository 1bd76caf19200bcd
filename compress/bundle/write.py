"""The hand-off bundle: everything an app team needs to trust and run a model without this toolkit.

``model.tflite`` (and e.g. ``model_frame.tflite``, the same model at the app's frame size),
``model_card.json`` (I/O contract, quality, size, provenance, the SHA-256 of every model file), a
``README.md`` made from the card, golden input/output tensors, and ``run_model.py`` with the three
numpy-only modules it imports (``RUNTIME_FILES``: the very files ``ispdc process`` runs, copied, so
both give the same image).  The bundle is assembled in a temporary folder and renamed into place, so
a failure never leaves a partial one.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compress.bundle import reference_runner
from compress.bundle.readme import render_readme
from compress.bundle.reference_runner import file_sha256
from compress.runtime import tiling
from distill.data import bayer, rawio

RUNTIME_FILES = {"run_model.py": Path(reference_runner.__file__), "ispdc_tiling.py": Path(tiling.__file__),
                 "ispdc_rawio.py": Path(rawio.__file__), "ispdc_bayer.py": Path(bayer.__file__)}
"""Bundle name -> source file: the runner and the numpy-only modules it imports from its own folder."""
BUNDLE_FILES = ("model.tflite", "model_card.json", "README.md", "golden_input.npy", "golden_output.npy",
                *RUNTIME_FILES)


def golden_tolerance(output: dict[str, Any]) -> float:
    """What a faithful runtime may differ by: two quantization steps of an integer output, else 1e-4."""
    scale = output.get("scale") or 0.0
    return float(max(2.0 * scale, 1e-4))


def write_bundle(
    dest: Path, tflite_path: Path, card: dict[str, Any], golden_input: np.ndarray, golden_output: np.ndarray,
    extra_models: dict[str, Path] | None = None,
) -> Path:
    """Write the bundle to ``dest`` atomically (replacing an older bundle of the same name).

    ``extra_models`` maps bundle file names (``"model_frame.tflite"``) to model files copied in beside
    ``model.tflite``.  The card gets ``files_sha256`` (every model file's hash) and ``model_sha256``
    (``model.tflite``'s): ``ispdc verify`` checks them, ``ispdc process`` and ``run_model.py`` refuse a
    model that does not match.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        models = {"model.tflite": Path(tflite_path), **(extra_models or {})}
        for name, source in models.items():
            shutil.copyfile(source, staging / name)
        hashes = {name: file_sha256(staging / name) for name in models}
        golden = {**(card.get("golden") or {})}  # the order the golden input is in: verify checks the card keeps it
        golden.setdefault("channel_order", (card.get("input") or {}).get("channel_order"))
        card = {**card, "model_sha256": hashes["model.tflite"], "files_sha256": hashes, "golden": golden}
        np.save(staging / "golden_input.npy", golden_input.astype(np.float32))
        np.save(staging / "golden_output.npy", golden_output.astype(np.float32))
        for name, source in RUNTIME_FILES.items():
            shutil.copyfile(source, staging / name)
        (staging / "model_card.json").write_text(json.dumps(card, indent=2))
        (staging / "README.md").write_text(render_readme(card))
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            staging.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest

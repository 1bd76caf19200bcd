"""The hand-off bundle: everything an app team needs to trust and run a model without this toolkit.

``model.tflite``, ``model_card.json`` (I/O contract, quality, size, provenance), a ``README.md`` made
from the card, golden input/output tensors and ``run_model.py`` (numpy + ai-edge-litert only).  The
bundle is assembled in a temporary folder and renamed into place, so a failure never leaves a partial one.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compress.bundle.readme import render_readme

RUNNER_SOURCE = Path(__file__).with_name("reference_runner.py")
BUNDLE_FILES = ("model.tflite", "model_card.json", "README.md", "golden_input.npy", "golden_output.npy",
                "run_model.py")


def golden_tolerance(output: dict[str, Any]) -> float:
    """What a faithful runtime may differ by: two quantization steps of an integer output, else 1e-4."""
    scale = output.get("scale") or 0.0
    return float(max(2.0 * scale, 1e-4))


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file: the card's ``model_sha256`` lets anyone check the model is the one scored."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(
    dest: Path, tflite_path: Path, card: dict[str, Any], golden_input: np.ndarray, golden_output: np.ndarray
) -> Path:
    """Write the bundle to ``dest`` atomically (replacing an older bundle of the same name).

    The card gets ``model_sha256``, the hash of the copied ``model.tflite`` (``ispdc verify`` checks it).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copyfile(tflite_path, staging / "model.tflite")
        card = {**card, "model_sha256": file_sha256(staging / "model.tflite")}
        np.save(staging / "golden_input.npy", golden_input.astype(np.float32))
        np.save(staging / "golden_output.npy", golden_output.astype(np.float32))
        shutil.copyfile(RUNNER_SOURCE, staging / "run_model.py")
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

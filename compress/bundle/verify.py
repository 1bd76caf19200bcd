"""Check a hand-off bundle before trusting it: files present, model intact, golden vectors reproduced.

``ispdc verify BUNDLE`` runs every check (it does not stop at the first failure) so one run says all
that is wrong: a missing file, a model whose bytes differ from the card's ``model_sha256``, a file
that no longer loads, an input shape the card does not describe, or golden outputs outside the card's
tolerance (a tampered or mis-converted model, or a runtime that computes differently).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.bundle.write import BUNDLE_FILES, file_sha256
from compress.runtime.parity import run_tflite


class BundleError(ValueError):
    """A path that is not a usable bundle at all (missing folder, unreadable card); names the path."""


@dataclass
class VerifyResult:
    """What ``verify_bundle`` found: the checks that passed and one line per failure."""

    bundle: Path
    passed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def load_card(bundle: Path | str) -> dict[str, Any]:
    """The bundle's ``model_card.json``; a missing folder or unreadable card is a ``BundleError``."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder")
    path = bundle / "model_card.json"
    try:
        card = json.loads(path.read_text())
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the model card ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise BundleError(f"{path}: the model card must be a JSON object")
    return card


def verify_bundle(bundle: Path | str, num_threads: int = 2) -> VerifyResult:
    """Run every check on ``bundle``; raises ``BundleError`` only when it is not a folder."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder")
    result = VerifyResult(bundle)
    missing = [name for name in BUNDLE_FILES if not (bundle / name).is_file()]
    if missing:
        result.failures.append(f"missing file(s): {', '.join(missing)}")
    else:
        result.passed.append(f"all {len(BUNDLE_FILES)} bundle files present")
    try:
        card: dict[str, Any] | None = load_card(bundle)
    except BundleError as exc:
        result.failures.append(str(exc))
        card = None
    model = bundle / "model.tflite"
    if card is not None and model.is_file():
        _check_sha(card, model, result)
    if model.is_file():
        _check_model(card, bundle, result, num_threads)
    return result


def _check_sha(card: dict[str, Any], model: Path, result: VerifyResult) -> None:
    expected = card.get("model_sha256")
    if expected is None:
        result.passed.append("model_sha256: not in the card (skipped)")
        return
    actual = file_sha256(model)
    if actual != str(expected).lower():
        result.failures.append(f"model.tflite sha256 {actual[:16]}... does not match the card's "
                               f"model_sha256 {str(expected)[:16]}... (the model file was changed)")
    else:
        result.passed.append("model.tflite sha256 matches the card")


def _check_model(card: dict[str, Any] | None, bundle: Path, result: VerifyResult, num_threads: int) -> None:
    """Load the model, compare its input with the card, re-run the golden vectors."""
    from ai_edge_litert.interpreter import Interpreter

    model = bundle / "model.tflite"
    try:
        interpreter = Interpreter(model_path=str(model))
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
    except (ValueError, RuntimeError) as exc:
        result.failures.append(f"model.tflite does not load ({exc}): the file is corrupt or truncated")
        return
    shape = [int(d) for d in inp["shape"]]
    if card is not None:
        card_in = card.get("input") or {}
        problems = []
        if card_in.get("shape") is not None and list(card_in["shape"]) != shape:
            problems.append(f"shape {card_in['shape']} vs model {shape}")
        if card_in.get("dtype") is not None and card_in["dtype"] != np.dtype(inp["dtype"]).name:
            problems.append(f"dtype {card_in['dtype']} vs model {np.dtype(inp['dtype']).name}")
        if problems:
            result.failures.append("model card input does not describe the model: " + "; ".join(problems))
        else:
            result.passed.append(f"model loads; input {shape} {np.dtype(inp['dtype']).name} as the card says")
    if card is None or not all((bundle / n).is_file() for n in ("golden_input.npy", "golden_output.npy")):
        return
    tolerance = (card.get("golden") or {}).get("tolerance")
    if not isinstance(tolerance, (int, float)):
        result.failures.append("model card has no numeric golden.tolerance")
        return
    try:
        golden_in = np.load(bundle / "golden_input.npy")
        golden_out = np.load(bundle / "golden_output.npy")
    except (OSError, ValueError) as exc:
        result.failures.append(f"golden vectors unreadable ({exc})")
        return
    if golden_in.ndim != 4 or golden_out.ndim != 4:
        result.failures.append(f"golden vectors must be NHWC; got {golden_in.shape} and {golden_out.shape}")
        return
    try:
        output = np.transpose(run_tflite(model, np.transpose(golden_in, (0, 3, 1, 2)), num_threads), (0, 2, 3, 1))
    except (ValueError, RuntimeError) as exc:
        result.failures.append(f"golden input does not run through model.tflite ({exc})")
        return
    if output.shape != golden_out.shape:
        result.failures.append(f"golden output shape {golden_out.shape} != model output {output.shape}")
        return
    diff = float(np.abs(output - golden_out).max())
    if not diff <= tolerance:
        result.failures.append(f"golden output not reproduced: max |diff| {diff:.6g} > tolerance {tolerance:g} "
                               f"(model.tflite computes something else than when the bundle was made)")
    else:
        result.passed.append(f"golden output reproduced: max |diff| {diff:.6g} <= tolerance {tolerance:g}")

"""Check a hand-off bundle before trusting it: every card field the model or the golden files can confirm.

``ispdc verify BUNDLE`` runs every check (it does not stop at the first failure) and reports each
mismatch as one line naming the card field, e.g. ``input.scale: card 0.5, model 0.00392157``:

* files: every bundle file present;
* hashes: every entry of ``files_sha256`` and ``model_sha256`` against the file, and the SHA-256 the
  README states against the card's;
* the model's tensors: input and output ``name``, ``shape``, ``dtype``, ``scale``, ``zero_point``
  (scales to a relative 1e-6) as ``model.tflite`` declares them;
* the frame model (card ``frame``): it loads, its input is the card's ``frame.packed_hw``, and its I/O
  dtypes and quantization are the tile model's (an app feeds both the same way);
* the golden vectors: ``golden_input.npy`` through ``model.tflite`` gives ``golden_output.npy`` within
  ``golden.tolerance``; the golden output lies in the card's ``output.range`` (slack: a quarter of it) and spans at
  least 2 % of it (a card saying [0, 255] for a [0, 1] model fails; a dark golden crop through a barely
  trained model reached 17 % of [0, 1]);
* the channel order (``compress.bundle.channel_check``): a permutation of B, Gb, R, Gr, the order the
  golden data were written with, and, when the golden input is image data, the channels it names
  green are the two whose means are most alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.bundle.channel_check import check_channel_order
from compress.bundle.reference_runner import BundleError, card_sha256, file_sha256, golden_diff, load_card
from compress.bundle.write import BUNDLE_FILES

__all__ = ["BundleError", "VerifyResult", "load_card", "verify_bundle"]

_README_HASH = re.compile(r"`?([\w.-]+\.tflite)`? SHA-256: `([0-9a-fA-F]{64})`")
_FIELDS = ("name", "shape", "dtype", "scale", "zero_point")
RANGE_SLACK = 0.25  # a model without a final clamp overshoots: a 3-step API-test model gave [-0.126, 0.126]
RANGE_COVER = 0.02  # a stated range 50x wider than the golden output reaches: the card's scale is wrong


@dataclass
class VerifyResult:
    """What ``verify_bundle`` found: the checks that passed and one line per failure."""

    bundle: Path
    passed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def verify_bundle(bundle: Path | str, num_threads: int = 2) -> VerifyResult:
    """Run every check on ``bundle``; raises ``BundleError`` only when it is not a folder."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder")
    result = VerifyResult(bundle)
    try:
        card: dict[str, Any] | None = load_card(bundle)
    except BundleError as exc:
        result.failures.append(str(exc))
        card = None
    frame_file = ((card or {}).get("frame") or {}).get("file")
    expected = [*BUNDLE_FILES, *([frame_file] if frame_file else [])]
    missing = [name for name in expected if not (bundle / name).is_file()]
    if missing:
        result.failures.append(f"missing file(s): {', '.join(missing)}")
    else:
        result.passed.append(f"all {len(expected)} bundle files present")
    if card is None:
        return result
    _check_hashes(card, bundle, result)
    _check_readme(card, bundle, result)
    details = _model_details(bundle / "model.tflite", result)
    if details is not None:
        _compare_tensors(card, details, result)
        _check_golden(card, bundle, details, result, num_threads)
    if frame_file and (bundle / frame_file).is_file():
        _check_frame(card, bundle, frame_file, details, result)
    for ok, line in check_channel_order(card, bundle):
        (result.passed if ok else result.failures).append(line)
    return result


def _check_hashes(card: dict[str, Any], bundle: Path, result: VerifyResult) -> None:
    """Every hash the card records, one line per file (``model_sha256`` and ``files_sha256`` together)."""
    recorded = dict(card.get("files_sha256") or {})
    if not recorded and card.get("model_sha256") is None:
        result.passed.append("model_sha256: not in the card (skipped)")
        return
    names = sorted({*recorded, *(["model.tflite"] if card.get("model_sha256") else [])})
    for name in names:
        fields = [f"files_sha256[{name}]"] if name in recorded else []
        if name == "model.tflite" and card.get("model_sha256") is not None:
            if name in recorded and str(recorded[name]).lower() != str(card["model_sha256"]).lower():
                result.failures.append(f"model_sha256: card {str(card['model_sha256'])[:16]}..., "
                                       f"files_sha256[model.tflite] {str(recorded[name])[:16]}... (they must agree)")
            fields.insert(0, "model_sha256")
        if not (bundle / name).is_file():
            continue  # reported as missing
        actual, wanted = file_sha256(bundle / name), card_sha256(card, name)
        if actual != wanted:
            result.failures.append(f"{' / '.join(fields)}: card {str(wanted)[:16]}..., {name} {actual[:16]}... "
                                   f"(the file was changed)")
        else:
            result.passed.append(f"{name} sha256 matches the card")


def _check_readme(card: dict[str, Any], bundle: Path, result: VerifyResult) -> None:
    """The SHA-256 the README states for each model equals the card's."""
    try:
        stated = dict(_README_HASH.findall((bundle / "README.md").read_text()))
    except OSError:
        return  # reported as missing
    names = sorted({*(card.get("files_sha256") or {}), *(["model.tflite"] if card.get("model_sha256") else [])})
    for name in names:
        wanted = card_sha256(card, name)
        if name not in stated:
            result.failures.append(f"README.md: states no SHA-256 for {name} (card {str(wanted)[:16]}...)")
        elif stated[name].lower() != wanted:
            result.failures.append(f"README.md: {name} SHA-256 {stated[name][:16]}..., card {str(wanted)[:16]}...")
    if names and all(stated.get(n, "").lower() == card_sha256(card, n) for n in names):
        result.passed.append("README.md states the card's SHA-256")


def _describe(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    quantized = scale != 0.0
    return {"name": str(detail["name"]), "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name, "scale": float(scale) if quantized else None,
            "zero_point": int(zero_point) if quantized else None}


def _model_details(model: Path, result: VerifyResult, label: str = "model.tflite") -> dict[str, Any] | None:
    """``{"input": ..., "output": ...}`` as the model declares them; None (and a failure) if it does not load."""
    if not model.is_file():
        return None
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(model))
        interpreter.allocate_tensors()
        return {"input": _describe(interpreter.get_input_details()[0]),
                "output": _describe(interpreter.get_output_details()[0])}
    except (ValueError, RuntimeError) as exc:
        result.failures.append(f"{label} does not load ({exc}): the file is corrupt or truncated")
        return None


def _differs(card_value: Any, model_value: Any) -> bool:
    if isinstance(card_value, (int, float)) and isinstance(model_value, (int, float)) and not (
            isinstance(card_value, bool) or isinstance(model_value, bool)):
        return not np.isclose(float(card_value), float(model_value), rtol=1e-6, atol=0.0)
    if isinstance(card_value, (list, tuple)):
        return [int(v) for v in card_value] != model_value if all(isinstance(v, int) for v in card_value) else True
    return bool(card_value != model_value)


def _show(value: Any) -> str:
    return f"{value:.8g}" if isinstance(value, float) else str(value)


def _compare_tensors(card: dict[str, Any], details: dict[str, Any], result: VerifyResult) -> None:
    """Card ``input``/``output`` name, shape, dtype, scale, zero point against the model's tensors."""
    before = len(result.failures)
    for side in ("input", "output"):
        section = card.get(side)
        if not isinstance(section, dict):
            result.failures.append(f"{side}: not in the card")
            continue
        for key in _FIELDS:
            if key in section and _differs(section[key], details[side][key]):
                result.failures.append(f"{side}.{key}: card {_show(section[key])}, model {_show(details[side][key])}")
    if len(result.failures) == before:
        inp, out = details["input"], details["output"]
        result.passed.append(f"model loads; input {inp['shape']} {inp['dtype']}, output {out['shape']} {out['dtype']}: "
                             f"names, shapes, dtypes, scales, zero points as the card says")


def _check_golden(card: dict[str, Any], bundle: Path, details: dict[str, Any], result: VerifyResult,
                  num_threads: int) -> None:
    """The golden vectors reproduce, and the golden output lies in the card's (representable) output range."""
    if not all((bundle / n).is_file() for n in ("golden_input.npy", "golden_output.npy")):
        return
    try:
        diff, tolerance = golden_diff(bundle, card, num_threads)
    except BundleError as exc:
        result.failures.append(f"golden.tolerance: {exc}")
        return
    except (OSError, ValueError, RuntimeError) as exc:
        result.failures.append(f"golden input does not run through model.tflite ({exc})")
        return
    if not diff <= tolerance:
        result.failures.append(f"golden output not reproduced: max |diff| {diff:.6g} > tolerance {tolerance:g} "
                               f"(model.tflite computes something else than when the bundle was made)")
    else:
        result.passed.append(f"golden output reproduced: max |diff| {diff:.6g} <= tolerance {tolerance:g}")
    stated = (card.get("output") or {}).get("range")
    if not (isinstance(stated, list) and len(stated) == 2):
        return
    golden = np.load(bundle / "golden_output.npy")
    low, high = float(golden.min()), float(golden.max())
    width = float(stated[1]) - float(stated[0])
    slack = tolerance + RANGE_SLACK * width
    if width <= 0 or low < stated[0] - slack or high > stated[1] + slack or high - low < RANGE_COVER * width:
        result.failures.append(f"output.range: card {stated}, golden output spans [{low:.6g}, {high:.6g}]")
    else:
        result.passed.append(f"golden output [{low:.3g}, {high:.3g}] fits the card's output.range {stated}")


def _check_frame(card: dict[str, Any], bundle: Path, name: str, tile: dict[str, Any] | None,
                 result: VerifyResult) -> None:
    """The frame model loads, takes the card's ``frame.packed_hw``, and is fed like the tile model."""
    details = _model_details(bundle / name, result, name)
    if details is None:
        return
    before = len(result.failures)
    packed = (card.get("frame") or {}).get("packed_hw")
    if packed is not None and [int(v) for v in packed] != details["input"]["shape"][1:3]:
        result.failures.append(f"frame.packed_hw: card {packed}, {name} input {details['input']['shape']}")
    if tile is not None:
        for side in ("input", "output"):
            for key in ("dtype", "scale", "zero_point"):
                if _differs(tile[side][key], details[side][key]) if tile[side][key] is not None else (
                        details[side][key] is not None):
                    result.failures.append(f"frame: {name} {side}.{key} {details[side][key]}, model.tflite "
                                           f"{tile[side][key]} (both must be fed alike)")
    if len(result.failures) == before:
        result.passed.append(f"{name} loads; input {details['input']['shape']}, I/O quantization as model.tflite")

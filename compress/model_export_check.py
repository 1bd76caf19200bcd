"""The export part of ``compress.model_check``: ONNX export and onnx2tf fp32 TFLite, each with parity.

Converter failures arrive as pages of log; ``explain_failure`` turns the usual ones into one line
that names the op (an ONNX op onnx2tf cannot convert, a TensorFlow op TFLite has no builtin for, an
aten op torch.onnx has no ONNX function for), with a fix where one is known.  TensorFlow and onnx2tf
are imported by ``compress.export.tflite`` only when a conversion runs.
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.export.onnx_export import export_onnx
from compress.export.tflite import convert_onnx_to_tflite
from compress.export.tflite_inspect import non_builtin_ops
from compress.model_contract import shape_text
from compress.runtime.parity import run_onnx, run_tflite
from distill.metrics import psnr_db

MIN_PARITY_DB = 60.0
"""As the export stage's default ``export.parity_min_db``: fp32 ONNX/TFLite vs PyTorch."""
OP_HINTS = {
    "Erf": "exact GELU (nn.GELU()) exports as Erf: use nn.GELU(approximate='tanh')",
    "Atan": "atan/atan2 have no TFLite builtin: approximate them with a polynomial",
    "DFT": "FFTs (torch.fft) have no TFLite path: use convolutions",
}
"""Known fixes for ops a TFLite conversion stops at."""
AddFinding = Callable[[str, bool, str], None]


def _with_hints(ops: list[str]) -> str:
    hints = [OP_HINTS[op] for op in ops if op in OP_HINTS]
    return f" ({'; '.join(hints)})" if hints else ""


def explain_failure(exc: BaseException) -> tuple[str, list[str]]:
    """One line for a failed export or conversion, and the ops it names (empty when none was named)."""
    text = str(exc)
    missing = re.search(r"No module named 'onnx2tf\.ops\.(\w+)'", text)
    if missing:
        op = missing.group(1)
        return f"onnx2tf has no converter for the ONNX op {op}{_with_hints([op])}", [op]
    select = re.findall(r"TF Select ops: ([^\n]+)", text) or re.findall(r"[Cc]ustom ops: ([^\n]+)", text)
    ops = sorted({op.strip() for line in select for op in line.split(",") if op.strip()})
    if not ops:
        ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)))
    if ops:
        return (f"TFLite has no builtin op for {', '.join(ops)} (a Flex/TF Select op: stock runtimes and "
                f"delegates cannot run it){_with_hints(ops)}"), ops
    aten = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if aten:
        return f"torch.onnx has no ONNX function for {aten.group(1)}: the model cannot be exported to ONNX", \
            [aten.group(1)]
    errors = re.findall(r"^\s*(?:\w+\.)*\w*(?:Error|Exception): .+$", text, flags=re.MULTILINE)
    line = errors[-1].strip() if errors else next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = line if len(line) <= 300 else line[:297] + "..."
    return f"{type(exc).__name__}: {line}", []


def check_export(add: AddFinding, facts: dict[str, Any], model: nn.Module, x: torch.Tensor, convert: bool) -> None:
    """Export ``model`` (eval mode) for ``x``'s shape, then convert to fp32 TFLite unless ``convert`` is off;
    ``add(stage, ok, message)`` takes each finding, ``facts`` the numbers."""
    model.eval()
    with torch.no_grad():
        reference = model(x).float().numpy()
    frames = x.numpy().astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="ispdc-check-") as folder:
        try:
            n, c, h, w = (int(d) for d in x.shape)
            onnx_path = export_onnx(model, Path(folder) / "model.onnx", (n, c, h, w))
        except Exception as exc:
            message, ops = explain_failure(exc)
            facts.update(onnx_ok=False, unsupported_ops=ops)
            add("export", False, f"ONNX export at {shape_text(x.shape)} failed: {message}")
            return
        _parity(add, facts, "export", "onnx", lambda: run_onnx(onnx_path, frames), reference, "ONNX")
        if not convert:
            return
        try:
            files = convert_onnx_to_tflite(onnx_path, Path(folder), None, modes=())
        except Exception as exc:
            message, ops = explain_failure(exc)
            facts.update(tflite_ok=False, non_builtin_ops=ops)
            add("tflite", False, f"fp32 TFLite conversion failed: {message}")
            return
        others = non_builtin_ops(files["fp32"])
        facts["non_builtin_ops"] = others
        if others:
            add("tflite", False, f"the fp32 TFLite uses non-builtin ops {', '.join(others)}{_with_hints(others)}")
        _parity(add, facts, "tflite", "tflite", lambda: run_tflite(files["fp32"], frames), reference, "fp32 TFLite")


def _parity(add: AddFinding, facts: dict[str, Any], stage: str, key: str, run: Callable[[], np.ndarray],
            reference: np.ndarray, what: str) -> None:
    try:
        exported = run()
    except Exception as exc:
        facts[f"{key}_ok"] = False
        add(stage, False, f"{what} does not run: {explain_failure(exc)[0]}")
        return
    db = psnr_db(exported, reference) if exported.shape == reference.shape else float("-inf")
    ok = db >= MIN_PARITY_DB
    facts.update({f"{key}_ok": ok, f"{key}_parity_db": db})
    if exported.shape != reference.shape:
        add(stage, False, f"{what} output is {shape_text(exported.shape)}, PyTorch's {shape_text(reference.shape)}")
    else:
        add(stage, ok, f"{what} matches PyTorch at {db:.1f} dB PSNR (needs >= {MIN_PARITY_DB:.0f} dB)")

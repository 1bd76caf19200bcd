"""Inspect a finished ``.tflite``: its ops (builtin or not) and its I/O tensors.

Kept apart from the converter (``compress.export.tflite``) because it needs ai-edge-litert only: no
TensorFlow, onnx2tf or onnx, so gates, the bundle and its tests can read a model cheaply.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class NonBuiltinOpError(ValueError):
    """A ``.tflite`` uses Flex (TF Select) or custom ops, which stock runtimes and delegates lack."""


def _op_codes(path: Path) -> list[tuple[str, bool]]:
    """(name, is_builtin) per operator, in execution order, read from the flatbuffer (no interpreter:
    a model with Flex ops cannot even be loaded without the TF Select delegate)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(o).OpcodeIndex())
            builtin = flatbuffer_utils.get_builtin_code_from_operator_code(code)
            if builtin == schema.BuiltinOperator.CUSTOM:
                ops.append(((code.CustomCode() or b"CUSTOM").decode(), False))
            else:
                ops.append((names.get(builtin, f"BUILTIN_{builtin}"), True))
    return ops


def tflite_ops(path: Path) -> list[str]:
    """Op names per operator in execution order (builtins as ``CONV_2D``; custom/Flex by custom code)."""
    return [name for name, _ in _op_codes(path)]


def non_builtin_ops(path: Path) -> list[str]:
    """The distinct Flex (TF Select) and custom ops of ``path``, sorted; [] for a builtin-only model."""
    return sorted({name for name, builtin in _op_codes(path) if not builtin})


def assert_builtin_only(path: Path) -> None:
    """Raise ``NonBuiltinOpError`` if ``path`` uses Flex or custom ops."""
    others = non_builtin_ops(path)
    if others:
        raise NonBuiltinOpError(f"{path} uses non-builtin ops {others}: stock TFLite runtimes and delegates "
                                f"cannot run them")


def tflite_io_details(path: Path) -> dict[str, list[dict[str, Any]]]:
    """JSON-ready ``{"inputs": [...], "outputs": [...]}``: name, shape, dtype, scale, zero_point.

    ``scale``/``zero_point`` are None for float tensors: a quantized tensor means
    ``real = scale * (q - zero_point)``.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def describe(detail: dict[str, Any]) -> dict[str, Any]:
        scale, zero_point = detail["quantization"]
        quantized = scale != 0.0
        return {
            "name": str(detail["name"]),
            "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale) if quantized else None,
            "zero_point": int(zero_point) if quantized else None,
        }

    return {"inputs": [describe(d) for d in interpreter.get_input_details()],
            "outputs": [describe(d) for d in interpreter.get_output_details()]}

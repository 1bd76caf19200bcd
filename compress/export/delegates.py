"""Which phone runtimes can take a ``.tflite``: the GPU delegate's op rules and XNNPACK's partitions.

MAI 2021 ran models through the MediaTek Neuron delegate and MAI 2022 through the TFLite GPU
delegate; an op a delegate lacks falls back to the CPU, with a hand-over at every boundary (a model
"not optimized for the target platform" took 1.86 s instead of ~0.1 s).  So the bundle says, per
variant, what each runtime makes of it.

GPU: TFLite's analyzer (``tf.lite.experimental.Analyzer.analyze(gpu_compatibility=True)``) is run and
its warnings parsed, but measured on the pinned TensorFlow (2.21) it prints "looks compatible" for
every model tried: Flex ops (``FlexCosh``, ``FlexErf``), ``TOPK_V2``, ``GATHER_ND`` and the int16x8
quickstart model, whose int16 ``DEQUANTIZE`` TF's own ``gpu_compatibility.cc`` rejects (the card keeps
its verdict as ``gpu.analyzer_compatible``).  So this module also applies the op-level
rules of ``tensorflow/lite/tools/versioning/gpu_compatibility.cc`` itself (the op list and the
conditions that a converted image model can hit), reading the flatbuffer with ai-edge-litert only;
a variant is GPU-compatible when neither flags an op.
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

from compress.runtime.xnnpack import xnnpack_report

GPU_OPS = frozenset("""
ABS ADD ADD_N ATAN2 AVERAGE_POOL_2D BATCH_MATMUL CAST CEIL CONCATENATION CONV_2D COS CUMSUM DENSIFY
DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP FLOOR
FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL HARD_SWISH LEAKY_RELU LESS LESS_EQUAL
LOG LOGICAL_AND LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD
PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN REDUCE_PROD RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR RSQRT SELECT SELECT_V2 SIGN SIN SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT
SQUARE SQUARED_DIFFERENCE STABLEHLO_CLAMP STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE TRANSPOSE_CONV
""".split())
"""The builtin ops ``CheckGpuDelegateCompatibility`` has a case for (TF 2.21); any other is "Not supported op"."""

GPU_CUSTOM_OPS = frozenset({"Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "Resampler"})
_WARNING = re.compile(r"GPU COMPATIBILITY WARNING: (?P<reason>.+)")
_OP_LINE = re.compile(r"^\s*Op#\d+ (?P<op>[A-Za-z0-9_]+)\(")


def parse_analyzer(text: str) -> list[dict[str, str]]:
    """``[{"op", "reason"}]`` from the analyzer's printout: each warning belongs to the op line above it
    (the per-subgraph summary warning, "Subgraph#0 has GPU delegate compatibility issues ...", is skipped)."""
    flagged, last_op = [], "?"
    for line in text.splitlines():
        if (op := _OP_LINE.match(line)) is not None:
            last_op = op["op"]
        elif (warning := _WARNING.search(line)) is not None and not warning["reason"].startswith("Subgraph#"):
            flagged.append({"op": last_op, "reason": warning["reason"].strip()})
    return flagged


def analyzer_gpu_report(path: Path) -> dict[str, Any]:
    """``{"compatible": bool, "flagged": [...]}`` as TFLite's analyzer prints it (needs TensorFlow)."""
    import tensorflow as tf

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tf.lite.experimental.Analyzer.analyze(model_path=str(path), gpu_compatibility=True)
    text = out.getvalue()
    flagged = parse_analyzer(text)
    return {"compatible": "looks compatible with GPU delegate" in text and not flagged, "flagged": flagged}


def _tensor_type(schema: Any, tensor: Any) -> str:
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return str(names.get(tensor.type, tensor.type))


def _op_problem(name: str, op: Any, tensors: list[Any], buffers: list[Any], schema: Any) -> str | None:
    """The reason ``gpu_compatibility.cc`` gives for one op, or None when it passes (the conditions an
    image model converted by onnx2tf can meet; shape checks of recurrent/embedding ops are left out)."""
    if name not in GPU_OPS:
        return f"Not supported op {name}"
    ins = [tensors[i] for i in op.inputs if i >= 0]
    options = op.builtinOptions
    rank = len(ins[0].shape) if ins and ins[0].shape is not None else 0
    if name == "DEQUANTIZE" and _tensor_type(schema, ins[0]) == "INT16":
        return "Unsupported dequantization type."
    if name == "ADD_N" and len(ins) != 2:
        return "ADD_N only supports 2 inputs."
    if name == "CAST":
        pair = (_tensor_type(schema, ins[0]), _tensor_type(schema, tensors[op.outputs[0]]))
        ok = {("BOOL", "FLOAT32"), ("BOOL", "FLOAT16"), ("FLOAT32", "BOOL"), ("FLOAT16", "BOOL"),
              ("FLOAT32", "INT32"), ("INT32", "FLOAT32"), ("FLOAT32", "FLOAT32"), ("INT32", "INT32")}
        if pair not in ok:
            return f"Not supported Cast case. Input type: {pair[0]} and output type: {pair[1]}"
    if name == "STRIDED_SLICE" and options is not None:
        for mask in ("ellipsisMask", "newAxisMask", "shrinkAxisMask"):
            if getattr(options, mask, 0):
                return f"Slice does not support {mask}."
    if name in ("SLICE", "STRIDED_SLICE") and rank not in (3, 4):
        return f"{name} supports for 3 or 4 dimensional tensors only."
    if name == "MIRROR_PAD" and options is not None and options.mode != schema.MirrorPadMode.REFLECT:
        return "Only Reflective padding is supported for Mirror Pad operation."
    if name in ("PAD", "PADV2", "MIRROR_PAD") and len(ins) > 1:
        pads = ins[1].shape if ins[1].shape is not None else []
        if len(pads) != 2 or pads[0] not in (3, 4) or pads[1] != 2:
            return f"Invalid paddings tensor shape: expected 4x2 or 3x2, got {list(pads)}"
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD") and len(ins) > 1:
        axes = ins[1]
        if _tensor_type(schema, axes) != "INT32" or buffers[axes.buffer].data is None:
            return "Axes must be a constant INT32 tensor"
    if name == "MUL" and len(ins) == 2 and ins[0].shape is not None and ins[1].shape is not None and \
            len(ins[0].shape) == len(ins[1].shape):
        a, b = list(ins[0].shape), list(ins[1].shape)
        if any(x < y for x, y in zip(a, b)) and any(y < x for x, y in zip(a, b)):
            return "MUL requires one tensor that not less than second in all dimensions."
    if name == "DEPTH_TO_SPACE" and options is not None and options.blockSize <= 1:
        return "DEPTH_TO_SPACE block_size must be > 1."
    return None


def gpu_rule_report(path: Path) -> dict[str, Any]:
    """``{"compatible": bool, "flagged": [{"op", "reason"}]}`` from ``gpu_compatibility.cc``'s op rules,
    one entry per distinct (op, reason)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    flagged: list[dict[str, str]] = []
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if flatbuffer_utils.get_builtin_code_from_operator_code(code) == schema.BuiltinOperator.CUSTOM:
                custom = (code.customCode or b"CUSTOM").decode() if isinstance(code.customCode, bytes) else str(
                    code.customCode)
                problem = None if custom in GPU_CUSTOM_OPS else f"Not supported custom op {custom}"
                name = custom
            else:
                name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
                problem = _op_problem(name, op, graph.tensors, model.buffers, schema)
            if problem is not None and {"op": name, "reason": problem} not in flagged:
                flagged.append({"op": name, "reason": problem})
    return {"compatible": not flagged, "flagged": flagged}


def gpu_report(path: Path, analyzer: bool = True) -> dict[str, Any]:
    """The GPU-delegate verdict: ``compatible`` when neither the analyzer nor the op rules flag an op;
    ``flagged`` merges both; ``analyzer_compatible`` keeps what the analyzer alone said."""
    rules = gpu_rule_report(path)
    report: dict[str, Any] = {"compatible": rules["compatible"], "flagged": list(rules["flagged"])}
    if analyzer:
        found = analyzer_gpu_report(path)
        report["analyzer_compatible"] = found["compatible"]
        report["flagged"] += [f for f in found["flagged"] if f not in report["flagged"]]
        report["compatible"] = report["compatible"] and found["compatible"]
    return report


def xnnpack_section(path: Path) -> dict[str, Any]:
    """``{"partitions", "undelegated", "whole_graph"}``: XNNPACK takes the whole graph when it makes one
    partition and leaves no op to the builtin kernels."""
    found = xnnpack_report(path)
    undelegated = list(found["undelegated"])
    return {"partitions": int(found["partitions"]), "undelegated": undelegated, "ops": int(found["ops"]),
            "whole_graph": found["partitions"] == 1 and not undelegated}


def builtin_section(psnr_builtin: float, psnr_xnnpack: float) -> dict[str, float]:
    """Quality on TFLite's reference kernels (the stand-in for NPU integer paths) and its drop vs XNNPACK."""
    return {"psnr": float(psnr_builtin), "psnr_drop_db": float(psnr_xnnpack - psnr_builtin)}


def summarise(report: dict[str, dict[str, Any]]) -> list[str]:
    """One line per variant for logs and tags: GPU yes/no (first reason), XNNPACK partitions."""
    lines = []
    for fmt, r in report.items():
        first = r["gpu"]["flagged"][0] if r["gpu"]["flagged"] else {"op": "?", "reason": "analyzer"}
        gpu = "yes" if r["gpu"]["compatible"] else f"no ({first['op']}: {first['reason']})"
        x = r["xnnpack"]
        lines.append(f"{fmt}: GPU {gpu}; XNNPACK {x['partitions']} partition(s), "
                     f"{len(x['undelegated'])} op(s) left out" + (f" ({sorted(set(x['undelegated']))})"
                                                                  if x["undelegated"] else ""))
    return lines


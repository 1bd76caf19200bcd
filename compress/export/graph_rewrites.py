"""ONNX rewrites that keep INT8 TFLite models on XNNPACK's fast path (CPU).

XNNPACK (ai-edge-litert 2.3) runs INT8 ``LEAKY_RELU``, ``ADD``, ``SUB`` and ``MUL`` but leaves
INT8 ``PRELU``, ``HARD_SWISH``, ``MINIMUM``, ``MAXIMUM`` and a ``RELU`` that is not fused into the op
before it to TFLite's own kernels (``compress.runtime.xnnpack`` finds them; ``docs/quantization.md`` has the
whole list).  Each such op costs a slow kernel plus a graph partition, and turns INT8 slower than
fp32 (16-channel net: PReLU x1.49, HardSwish x1.35, ``Clip(0, 1)`` x1.66).  Each rewrite below
expresses the op exactly (in real arithmetic) with ops XNNPACK takes, ``|x|`` being written as
``LeakyRelu(alpha=-1)`` (XNNPACK rejects INT8 ``ABS`` and a LeakyRelu with alpha 0):

* ``PRelu(x, a)``      -> ``((1 + a) x + (1 - a) |x|) / 2``   (constant slope ``a``)
* ``HardSwish(x)``     -> ``x * (1/2 + (|x + 3| - |x - 3|) / 12)``
* ``Clip(x, lo, hi)``  -> ``(lo + hi) / 2 + (|x - lo| - |x - hi|) / 2``  (one side: ``lo + relu(x - lo)``)
* ``Max(a, b)``        -> ``(a + b + |a - b|) / 2``;  ``Min(a, b)`` -> ``(a + b - |a - b|) / 2``
* ``Relu(x)`` whose input comes from an op TFLite cannot fuse it into -> ``(x + |x|) / 2``

One rewrite is for INT8 accuracy, not coverage: TF's INT8 quantizer gives a ``CONCATENATION``'s inputs the
output's scale, so a U-Net skip concatenated with a decoder feature of a far wider range is rounded at
the wide one's step (AA-UNet student: SQNR ~0 dB on the skips, parity 30 dB).  Where a channel concat is
read by one conv only, the conv is split by input channels and the parts added:

* ``Conv(Concat(a, b), W)``  -> ``Conv(a, W[:, :Ca]) + Conv(b, W[:, Ca:])``  (bias on the first part)

so each input keeps its own scale and ``ADD`` requantizes (``Concat`` in ``REWRITABLE_OPS``).

``Clip(0, 6)`` (fused into the conv before it as RELU6) and ``Relu`` right after a ``Conv``/``Add``
/``Sub``/``Mul`` with no other reader (fused too) are left alone.  XNNPACK takes all of these ops in
fp32 already and the rewritten fp32 graph is 10-20 % slower (more elementwise passes), so apply the
rewrite to the ONNX file the INT8 variant is converted from.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

REWRITABLE_OPS = ("PRelu", "HardSwish", "Clip", "Max", "Min", "Relu", "Concat")
FUSING_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Add", "Sub", "Mul", "Gemm", "MatMul"})
RELU6 = (0.0, 6.0)
_FLOAT32 = np.dtype(np.float32)


class _Builder:
    """Appends nodes/initializers with names unique to one rewrite (``{prefix}/...``)."""

    def __init__(self, graph: onnx.GraphProto, prefix: str) -> None:
        self.graph, self.prefix, self.count = graph, prefix, 0
        self.nodes: list[onnx.NodeProto] = []

    def const(self, value: float | np.ndarray, dtype: np.dtype = _FLOAT32) -> str:
        name = f"{self.prefix}/c{self.count}"
        self.count += 1
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        out = output or f"{self.prefix}/t{self.count}"
        self.count += 1
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{self.prefix}/{op_type}{self.count}",
                                           **attrs))
        return out

    def abs(self, x: str) -> str:
        """``|x|`` as ``LeakyRelu(alpha=-1)``: XNNPACK takes it in INT8, unlike ``ABS`` (or alpha 0)."""
        return self.op("LeakyRelu", [x], alpha=-1.0)

    def relu(self, x: str, output: str | None = None) -> str:
        """``(x + |x|) / 2``."""
        return self.op("Mul", [self.op("Add", [x, self.abs(x)]), self.const(0.5)], output)


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs by tensor name."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _scalar(values: dict[str, np.ndarray], name: str) -> float | None:
    """The float value of an optional scalar input (``""`` = absent -> None); non-constant raises KeyError."""
    if not name:
        return None
    array = values[name]
    if array.size != 1:
        raise KeyError(name)
    return float(array.reshape(()))


def _float_elem_type(graph: onnx.GraphProto, tensor: str) -> bool:
    """True unless shape inference says ``tensor`` is not float32 (the rewrites use float constants)."""
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.name == tensor:
            return info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    return True


def _rewrite_node(node: onnx.NodeProto, graph: onnx.GraphProto, values: dict[str, np.ndarray],
                  producers: dict[str, onnx.NodeProto], readers: dict[str, int],
                  index: int) -> list[onnx.NodeProto] | None:
    """Replacement nodes for ``node`` (same output name), or None to keep it."""
    b = _Builder(graph, f"xnn_int8/{node.op_type}{index}")
    x, y = node.input[0] if node.input else "", node.output[0]
    if not _float_elem_type(graph, x):
        return None
    if node.op_type == "PRelu":  # ((1 + a) x + (1 - a) |x|) / 2
        slope = values.get(node.input[1])
        if slope is None:
            return None  # a slope computed at run time
        half_x = b.op("Mul", [x, b.const((1.0 + slope) / 2.0)])
        b.op("Add", [half_x, b.op("Mul", [b.abs(x), b.const((1.0 - slope) / 2.0)])], y)
    elif node.op_type == "HardSwish":  # x * (1/2 + (|x + 3| - |x - 3|) / 12)
        spread = b.op("Sub", [b.abs(b.op("Add", [x, b.const(3.0)])), b.abs(b.op("Sub", [x, b.const(3.0)]))])
        gate = b.op("Add", [b.op("Mul", [spread, b.const(1.0 / 12.0)]), b.const(0.5)])
        b.op("Mul", [x, gate], y)
    elif node.op_type == "Clip":
        try:
            lo = _scalar(values, node.input[1] if len(node.input) > 1 else "")
            hi = _scalar(values, node.input[2] if len(node.input) > 2 else "")
        except KeyError:
            return None  # bounds computed at run time
        if (lo, hi) == RELU6 or (lo is None and hi is None) or (lo == 0.0 and hi is None):
            return None  # RELU6 fuses into the conv; Clip(0, inf) is a Relu: left to the Relu rule's logic
        if lo is not None and hi is not None:  # (lo + hi) / 2 + (|x - lo| - |x - hi|) / 2
            spread = b.op("Sub", [b.abs(b.op("Sub", [x, b.const(lo)])), b.abs(b.op("Sub", [x, b.const(hi)]))])
            b.op("Add", [b.op("Mul", [spread, b.const(0.5)]), b.const((lo + hi) / 2.0)], y)
        elif lo is not None:  # lo + relu(x - lo)
            b.op("Add", [b.relu(b.op("Sub", [x, b.const(lo)])), b.const(lo)], y)
        else:  # hi - relu(hi - x)
            assert hi is not None  # lo is None here, and (None, None) returned above
            b.op("Sub", [b.const(hi), b.relu(b.op("Sub", [b.const(hi), x]))], y)
    elif node.op_type in ("Max", "Min"):  # (a + c +- |a - c|) / 2
        if len(node.input) != 2:
            return None
        a, c = node.input
        total, spread = b.op("Add", [a, c]), b.abs(b.op("Sub", [a, c]))
        b.op("Mul", [b.op("Add" if node.op_type == "Max" else "Sub", [total, spread]), b.const(0.5)], y)
    elif node.op_type == "Relu":
        producer = producers.get(x)
        if producer is not None and producer.op_type in FUSING_PRODUCERS and readers.get(x, 0) == 1:
            return None
        b.relu(x, y)
    else:
        return None
    return b.nodes


def rewrite_for_xnnpack_int8(onnx_path: Path, ops: Iterable[str] = REWRITABLE_OPS) -> dict[str, int]:
    """Apply the module's rewrites to ``onnx_path`` in place; returns ``{op_type: count}`` rewritten.

    ``ops`` picks rules by ONNX op type (``REWRITABLE_OPS``).  The file is saved only when something
    changed, and checked by ``onnx.checker`` (full check) before it is written.
    """
    ops = tuple(ops)
    unknown = sorted(set(ops) - set(REWRITABLE_OPS))
    if unknown:
        raise ValueError(f"no XNNPACK INT8 rewrite for {unknown}; choose from {list(REWRITABLE_OPS)}")
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # types are only used to skip non-float tensors; unknown means float
        pass
    graph = model.graph
    values = _constant_values(graph)
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for output in graph.output:
        readers[output.name] = readers.get(output.name, 0) + 1

    counts: dict[str, int] = {}
    new_nodes: list[onnx.NodeProto] = []
    orphaned: set[str] = set()  # Concat nodes whose only reader was split
    for index, node in enumerate(graph.node):
        if node.op_type == "Conv" and "Concat" in ops:
            split = _split_concat_conv(node, graph, values, producers, readers, index)
            if split is not None:
                new_nodes.extend(split)
                orphaned.add(node.input[0])
                counts["Concat"] = counts.get("Concat", 0) + 1
                continue
        replacement = _rewrite_node(node, graph, values, producers, readers, index) if node.op_type in ops else None
        if replacement is None:
            new_nodes.append(node)
        else:
            new_nodes.extend(replacement)
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if counts:
        del graph.node[:]
        graph.node.extend(n for n in new_nodes if not (n.op_type == "Concat" and n.output[0] in orphaned))
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(onnx_path))
    return counts


def _channels(graph: onnx.GraphProto, tensor: str) -> int | None:
    """The static channel count (dim 1, NCHW) of ``tensor`` from shape inference, or None."""
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.name == tensor:
            dims = info.type.tensor_type.shape.dim
            return dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else None
    return None


def _split_concat_conv(conv: onnx.NodeProto, graph: onnx.GraphProto, values: dict[str, np.ndarray],
                       producers: dict[str, onnx.NodeProto], readers: dict[str, int],
                       index: int) -> list[onnx.NodeProto] | None:
    """``Conv(Concat(x1..xn, axis=1))`` as the sum of ``n`` convs on the weight's input-channel slices
    (exact in real arithmetic; bias on the first), or None when the pattern does not hold exactly: a grouped
    conv, weights computed at run time, a concat with other readers, or unknown channel counts."""
    concat = producers.get(conv.input[0])
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if (concat is None or concat.op_type != "Concat" or readers.get(conv.input[0], 0) != 1
            or attrs.get("group", 1) != 1 or conv.input[1] not in values):
        return None
    axis = next((helper.get_attribute_value(a) for a in concat.attribute if a.name == "axis"), None)
    channels = [_channels(graph, x) for x in concat.input]
    weight = values[conv.input[1]]
    if (axis not in (1, -3) or len(channels) < 2 or None in channels
            or sum(c for c in channels if c) != weight.shape[1]):
        return None
    b = _Builder(graph, f"int8_split_concat/Conv{index}")
    bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
    parts, start = [], 0
    for i, (x, width) in enumerate(zip(concat.input, channels, strict=True)):
        assert width is not None
        inputs = [x, b.const(weight[:, start:start + width])] + ([bias] if bias and i == 0 else [])
        parts.append(b.op("Conv", inputs, **attrs))
        start += width
    total = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        total = b.op("Add", [total, part], conv.output[0] if i == len(parts) - 1 else None)
    return b.nodes


# ReduceMax <-> ReduceMin: ``max(x) = -min(-x)`` and ``min(x) = -max(-x)``
_OPPOSITE_REDUCE = {"ReduceMax": "ReduceMin", "ReduceMin": "ReduceMax"}


def untie_shared_reduce_extrema(model: onnx.ModelProto) -> int:
    """Rewrite ``ReduceMax(x)`` as ``-ReduceMin(-x)`` (and ``ReduceMin`` likewise) where ``x`` has other readers.

    Exact in float (negation is exact), and it keeps TFLite's INT8 quantizer from clipping ``x``:
    the MLIR quantizer (TF 2.21) treats ``REDUCE_MAX``/``REDUCE_MIN`` (like ``MAX_POOL_2D`` and
    ``CONCATENATION``) as same-scale ops and gives their input the *output's* calibrated range.  A
    channel max is narrower than its input (CBAM-style spatial attention, LW-ISP's FGAM: the max over
    channels is always positive, so its zero-inclusive range starts at 0), and so the shared input
    -- LW-ISP's encoder skip feature, read by the skip convs too -- lost every negative LeakyReLU
    value (25-43 % of them): 0.55 dB of LW-ISP's 0.56 dB INT8 drop.  The ``Mul(-1)`` gives the
    reduction an input of its own, which may be clipped harmlessly (only values that can never be the
    extremum are cut); ``MUL`` stays INT8 and on XNNPACK.  A reduction whose input has no other
    reader (and is not a graph input or output) is left alone: clipping it is equally harmless.
    Edits ``model`` in place; returns how many nodes were rewritten.
    """
    graph = model.graph
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    exposed = {o.name for o in graph.output} | {i.name for i in graph.input}
    new_nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for index, node in enumerate(graph.node):
        x = node.input[0] if node.input else ""
        if (node.op_type not in _OPPOSITE_REDUCE or not x or not _float_elem_type(graph, x)
                or (readers.get(x, 0) < 2 and x not in exposed)):
            new_nodes.append(node)
            continue
        b = _Builder(graph, f"int8_untie/{node.op_type}{index}")
        minus_one = b.const(-1.0)
        flipped = b.op("Mul", [x, minus_one])
        reduced = b.op(_OPPOSITE_REDUCE[node.op_type], [flipped, *node.input[1:]],
                       **{a.name: helper.get_attribute_value(a) for a in node.attribute})
        b.op("Mul", [reduced, minus_one], node.output[0])
        new_nodes.extend(b.nodes)
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return rewritten

"""Flatbuffer patches applied to every converted ``.tflite``: repairs of measured converter/runtime defects.

Each patch takes and returns flatbuffer bytes, and a model without the pattern it repairs comes back
byte-identical.  ``finish_flatbuffer`` applies them all in the order they must run (a widened or snapped output
scale changes what its readers' biases must be, so ``requantize_biases`` runs last).  Why each one
exists, with the numbers measured on LW-ISP (docs/quantization.md, 'What the quantization benchmark
shows'), is in its docstring.  The flatbuffer tools come from ai-edge-litert, imported where used.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

# op -> (input, weight, bias) operand positions of the ops whose bias scale must be input x weight scale
BIASED_OPS = {"CONV_2D": (0, 1, 2), "DEPTHWISE_CONV_2D": (0, 1, 2), "FULLY_CONNECTED": (0, 1, 2),
              "TRANSPOSE_CONV": (2, 1, 3)}
BIAS_DTYPES: dict[int, type[np.signedinteger[Any]]] = {2: np.int32, 4: np.int64}  # schema TensorType INT32, INT64
INT8 = 9  # schema TensorType INT8
XNNPACK_MAX_REQUANT = 256.0  # XNNPACK rejects a quantized conv whose input x weight / output scale is not below this
XNNPACK_LRELU_ONE = 256  # XNNPACK's QS8 leaky ReLU multipliers are round(256 * ratio): 8 fractional bits
# ops whose kernels read an int8 input at its own scale (the data input of convs: their biases are then
# re-scaled by requantize_biases); same-scale ops (max pool, concat, reshape) are not here
ANY_SCALE_READERS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 0, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 2, "ADD": None,
                     "SUB": None, "MUL": None, "MEAN": None, "LOGISTIC": None, "TANH": None, "DEQUANTIZE": None,
                     "QUANTIZE": None}


@dataclass
class _Graph:
    """One subgraph with what the patches ask of it: each op's name, each tensor's readers, the outputs."""

    model: Any
    graph: Any
    names: list[str]
    readers: dict[int, list[tuple[str, int]]]  # tensor index -> (op name, input slot) of every reader
    outputs: set[int]

    def ops(self) -> Iterator[tuple[str, Any]]:
        return zip(self.names, self.graph.operators)


def _patch(flatbuffer: bytes, patch_graph: Callable[[_Graph], bool]) -> bytes:
    """Run ``patch_graph`` on every subgraph; serialise again only when one of them changed something."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    changed = False
    for graph in model.subgraphs:
        names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
        readers: dict[int, list[tuple[str, int]]] = {}
        for name, op in zip(names, graph.operators):
            for slot, index in enumerate(op.inputs):
                readers.setdefault(int(index), []).append((name, slot))
        changed |= patch_graph(_Graph(model, graph, names, readers, {int(i) for i in graph.outputs}))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else flatbuffer


def finish_flatbuffer(flatbuffer: bytes, input_names: Sequence[str], output_names: Sequence[str]) -> bytes:
    """A converted flatbuffer as it ships: the ONNX I/O names, then every repair below, in order."""
    renamed = rename_io(flatbuffer, input_names, output_names)
    return requantize_biases(snap_leaky_relu_scales(widen_degenerate_scales(renamed)))


def rename_io(flatbuffer: bytes, input_names: Sequence[str], output_names: Sequence[str]) -> bytes:
    """Give the TFLite I/O tensors the ONNX names (``raw``/``rgb``) instead of ``serving_default_raw:0``."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    for index, name in [*zip(graph.inputs, input_names), *zip(graph.outputs, output_names)]:
        graph.tensors[index].name = name.encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def widen_degenerate_scales(flatbuffer: bytes) -> bytes:
    """Raise an output scale that is far finer than the accumulator that produces it.

    Why: without it XNNPACK could not run LW-ISP w0.25 int8 at all.  A ReLU unit that never fires on
    the calibration frames (LW-ISP's channel-attention bottleneck at width 0.25 has one hidden unit)
    is calibrated to the range [0, 0]; the quantizers then give it a scale of ~1e-8 (int8, MLIR) or a
    denormal ~1e-43 (16x8).  The requantization multiplier ``input_scale * weight_scale /
    output_scale`` of the op producing it is then ~13,000 (int8) to ~1e36, and XNNPACK refuses any
    multiplier not below 256: ai-edge-litert 2.3 aborted the process ("double free or corruption")
    and TF's quantization debugger failed ("failed to create XNNPACK runtime").  A float layer after
    that unit (a selective-precision candidate) put a DEQUANTIZE on the same scale and aborted XNNPACK
    again.  With the patch LW-ISP int8 runs wholly on XNNPACK, and Smallnet-JMU's int8 model, which
    XNNPACK failed to prepare, prepares too.

    What: for such a tensor (multiplier at least ``XNNPACK_MAX_REQUANT``, produced by a conv / fully
    connected op and read only as the data input of such ops or by a DEQUANTIZE) the output scale
    becomes ``input_scale * max(weight_scale)``, one accumulator step: zero (the only calibrated
    value, zero point kept) stays exact, nothing finer than the accumulator is lost, and the range
    only grows.  The readers' biases are re-scaled by ``requantize_biases``.
    """
    return _patch(flatbuffer, _widen_graph)


def _widen_graph(g: _Graph) -> bool:
    changed = False
    for name, op in g.ops():
        if name not in BIASED_OPS or len(op.outputs) != 1:
            continue
        x, w = (int(op.inputs[i]) for i in BIASED_OPS[name][:2])
        out = int(op.outputs[0])
        xq, wq, oq = (g.graph.tensors[t].quantization for t in (x, w, out))
        if any(q is None or q.scale is None or len(q.scale) == 0 for q in (xq, wq, oq)) or len(oq.scale) != 1:
            continue
        step = float(xq.scale[0]) * float(np.max(wq.scale))
        if not step > 0 or float(oq.scale[0]) * XNNPACK_MAX_REQUANT > step:
            continue
        if out in g.outputs or not all((r in BIASED_OPS and slot == BIASED_OPS[r][0]) or r == "DEQUANTIZE"
                                       for r, slot in g.readers.get(out, [])):  # readers that take any scale
            continue
        oq.scale = np.asarray([step], dtype=np.float32)
        changed = True
    return changed


def snap_leaky_relu_scales(flatbuffer: bytes) -> bytes:
    """Give each INT8 LEAKY_RELU an output scale at which XNNPACK's multipliers are exact.

    Why: XNNPACK's int8 leaky ReLU rounds its slopes to 8 fractional bits, and on LW-ISP w0.25 that
    rounding alone cost ~0.09 dB: XNNPACK int8 parity with the fp32 TFLite model on the held-out
    photos went 42.5 -> 43.1 dB with this patch, the output offset halved and the int8 drop fell
    0.127 -> 0.039 dB (no float layer needed any more).  TFLite's builtin kernels use 32-bit
    multipliers and do not need it (they lose a little to the coarser scales: LW-ISP w1.0 +0.356 ->
    +0.398 dB there, parity unchanged).

    What: XNNPACK computes the op with the multipliers ``round(256 * s_in / s_out)`` and ``round(256 *
    alpha * s_in / s_out)``, so each branch's slope is off by up to 0.5 / 256 of ``s_in / s_out`` (a
    lone int8 leaky ReLU measured -0.21 steps off at the top of its positive range, a ~0.1 % gain
    error; LW-ISP w0.25's 31 of them added up to a +2e-3 output offset).  This raises ``s_out`` just
    enough (at most ~2 %, the range only grows) that ``256 * s_in / s_out`` is a multiple of alpha's
    denominator (5 for 0.2), so both products are integers.  Only where every reader takes any input
    scale (``ANY_SCALE_READERS``) and the tensor is not a model output (19 of LW-ISP's 31 qualify);
    the readers' biases are re-scaled by ``requantize_biases``.
    """
    return _patch(flatbuffer, _snap_graph)


def _snap_graph(g: _Graph) -> bool:
    changed = False
    for name, op in g.ops():
        if name != "LEAKY_RELU":
            continue
        x, out = int(op.inputs[0]), int(op.outputs[0])
        xq, oq = g.graph.tensors[x].quantization, g.graph.tensors[out].quantization
        if (g.graph.tensors[x].type != INT8 or g.graph.tensors[out].type != INT8 or out in g.outputs
                or any(q is None or q.scale is None or len(q.scale) != 1 for q in (xq, oq))):
            continue
        if not all(r in ANY_SCALE_READERS and ANY_SCALE_READERS[r] in (None, slot)
                   for r, slot in g.readers.get(out, [])):
            continue
        step = Fraction(float(op.builtinOptions.alpha)).limit_denominator(64).denominator
        ratio = XNNPACK_LRELU_ONE * float(xq.scale[0]) / float(oq.scale[0])
        snapped = (ratio // step) * step
        if snapped < step or snapped == ratio:
            continue
        oq.scale = np.asarray([XNNPACK_LRELU_ONE * float(xq.scale[0]) / snapped], dtype=np.float32)
        changed = True
    return changed


def requantize_biases(flatbuffer: bytes) -> bytes:
    """Give every quantized conv / fully connected op a bias quantized at its own input x weight scale.

    Why: TF 2.21's 16x8 quantizer silently mis-scales a shared bias; on LW-ISP it cost the int16x8
    model 1.26 dB (drop 1.257 -> -0.015 dB with this patch).  ``calibrate_and_quantize`` quantizes a
    bias tensor that two ops share (one PyTorch module applied twice, e.g. LW-ISP's shared CCB
    sub-pixel conv) once, with the *first* op's input scale, and the second op reads it as if at its
    own: its bias comes out scaled by the ratio of the two input scales (0.11-0.21x too small there).
    The scale changes of ``widen_degenerate_scales`` and ``snap_leaky_relu_scales`` need the same
    repair for the ops that read the changed tensors.

    What: the kernels add the raw integer bias to the ``input_scale * weight_scale`` accumulator, so
    each op whose bias scale differs from that product gets its own correctly scaled copy (real value
    kept up to the rounding of the old scale, which is finer than one accumulator step).  Models where
    every bias already fits (the int8 MLIR quantizer duplicates shared biases itself) come back
    unchanged.
    """
    return _patch(flatbuffer, _requantize_graph)


def _requantize_graph(g: _Graph) -> bool:
    from ai_edge_litert.tools import flatbuffer_utils

    model, graph = g.model, g.graph
    uses = {index: len(readers) for index, readers in g.readers.items()}
    changed = False
    for name, op in g.ops():
        if name not in BIASED_OPS or len(op.inputs) <= BIASED_OPS[name][2]:
            continue
        slots = BIASED_OPS[name]
        x, w, b = (int(op.inputs[i]) for i in slots)
        if min(x, w, b) < 0:
            continue
        xq, wq, bias = graph.tensors[x].quantization, graph.tensors[w].quantization, graph.tensors[b]
        dtype = BIAS_DTYPES.get(bias.type)
        if (dtype is None or bias.quantization is None or xq is None or wq is None or xq.scale is None
                or wq.scale is None or bias.quantization.scale is None or len(xq.scale) != 1):
            continue
        stored = np.asarray(bias.quantization.scale, dtype=np.float64)
        wanted = float(xq.scale[0]) * np.asarray(wq.scale, dtype=np.float64)
        data = model.buffers[bias.buffer].data
        if data is None or len(stored) != len(wanted) or np.allclose(stored, wanted, rtol=1e-5, atol=0):
            continue
        values = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=dtype).astype(np.float64)
        info = np.iinfo(dtype)
        ints = np.clip(np.round(values * stored / wanted), info.min, info.max).astype(dtype)
        quant = copy.deepcopy(bias.quantization)
        quant.scale = wanted.astype(np.float32)
        buffer = flatbuffer_utils.BufferT()  # a new buffer: the old one may back other tensors
        buffer.data = np.frombuffer(ints.tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
        if uses.get(b, 0) > 1:  # shared tensor: this op gets its own
            uses[b] -= 1
            bias = copy.deepcopy(bias)
            bias.name = (bias.name or b"bias") + f"_requantized{len(graph.tensors)}".encode()
            graph.tensors.append(bias)
            inputs = np.array(op.inputs, copy=True)  # the object API's arrays are read-only views
            inputs[slots[2]] = len(graph.tensors) - 1
            op.inputs = inputs
        bias.buffer, bias.quantization = len(model.buffers) - 1, quant
        changed = True
    return changed

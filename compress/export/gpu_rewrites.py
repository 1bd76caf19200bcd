"""An exact ONNX rewrite that keeps a broadcast ``Expand`` on the TFLite GPU delegate.

onnx2tf writes ``Expand(x, [N, C, H, W])`` of a per-channel vector ``x`` (``N, C, 1, 1``; LW-ISP's
global feature vector, expanded to the bottleneck size before a concatenation) as
``MUL(x, ones[1, H, W, 1])``.  The GPU delegate rejects a ``MUL`` where each operand is smaller than
the other in some dimension (``gpu_compatibility.cc``: "MUL requires one tensor that not less than
second in all dimensions"), so every LW-ISP variant fails the GPU check on that one op
(``benchmarks/delegates.py``).  ``x + zeros[1, 1, H, W]`` is the same tensor (adding 0 is exact in
float; in int8 the zero constant is its zero point) and the delegate's ``ADD`` broadcasts both ways.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def rewrite_expand_for_gpu(onnx_path: Path) -> int:
    """Replace every ``Expand`` of an ``(N, C, 1, 1)`` tensor (C > 1) to a constant shape ``(N, 1, H, W)`` by
    ``Add`` of a zero ``(1, 1, H, W)`` constant, in place; returns how many (the file is saved only when > 0)."""
    model = onnx.load(str(onnx_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.input)}
    graph = model.graph
    count = 0
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "Expand":
            continue
        target = _constant(graph, node.input[1])
        source = shapes.get(node.input[0])
        if target is None or source is None or len(source) != 4 or target.size != 4 or source[2:] != [1, 1] \
                or int(target[1]) != 1 or source[1] == 1:  # a vector broadcast over H, W only: the ones that
            continue  # onnx2tf multiplies by are [1, H, W, 1], the MUL the GPU rejects ([1, H, W, C] passes)
        zeros = f"{node.output[0]}/gpu_zeros"
        shape = (1, 1, int(target[2]), int(target[3]))
        graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), zeros))
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(position, helper.make_node("Add", [node.input[0], zeros], [node.output[0]],
                                                     name=f"{node.name or 'expand'}_{index}/gpu_add"))
        count += 1
    if count:
        onnx.save(model, str(onnx_path))
    return count

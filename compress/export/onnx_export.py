"""PyTorch -> ONNX export with a fixed input shape, plus the pixel-shuffle rewrite TFLite needs.

PyTorch's ``PixelShuffle`` exports as ``DepthToSpace`` in CRD mode.  TFLite's ``DEPTH_TO_SPACE`` is
DCR, so onnx2tf lowers CRD to a 6-D reshape/transpose chain: exact, but mobile delegates reject or
slow down on 6-D tensors.  When the shuffled tensor comes straight from a conv (optionally through an
elementwise activation), permuting that conv's output channels turns CRD into DCR with identical
numbers, and TFLite gets its native op.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

INPUT_NAME = "raw"
OUTPUT_NAME = "rgb"
OPSET = 18

# Ops that act on each element independently (scalar side inputs at most), so they commute with a
# permutation of channels.  PRelu is left out: its slope can be per-channel.
ELEMENTWISE_OPS = frozenset({
    "Relu", "LeakyRelu", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Elu", "Selu",
    "Softplus", "Softsign", "Identity", "Erf", "Gelu", "Mish",
})


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, int, int, int],
                dcr_pixel_shuffle: bool = True) -> Path:
    """Export ``model`` for one fixed NCHW input shape (``raw`` -> ``rgb``) and check the file.

    A fixed shape lets onnx2tf and TFLite plan every tensor statically; the model is exported in
    eval mode (BatchNorm statistics, no dropout) and its training flag restored afterwards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        example = torch.zeros(input_shape, dtype=torch.float32, device=device)
        registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registration_log.level
        registration_log.setLevel(logging.ERROR)  # "torchvision is not installed" lines are not ours
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
                torch.onnx.export(
                    model, (example,), str(path), dynamo=True, opset_version=OPSET, external_data=False,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                )
        finally:
            registration_log.setLevel(level)
    finally:
        model.train(was_training)
    if dcr_pixel_shuffle:
        rewrite_depth_to_space_dcr(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def _dcr_permutation(channels: int, block: int) -> np.ndarray:
    """``perm[k_dcr] = k_crd``: CRD reads channel ``c*b*b + i*b + j``, DCR reads ``(i*b + j)*C + c``."""
    out_c = channels // (block * block)
    return np.arange(channels).reshape(out_c, block * block).T.reshape(-1)


def rewrite_depth_to_space_dcr(onnx_path: Path) -> int:
    """Rewrite every eligible CRD ``DepthToSpace`` to DCR in place; returns how many were rewritten.

    Eligible: the input is produced by a chain of elementwise ops ending at an ungrouped ``Conv``
    whose weights (and bias) are initializers, and no tensor on that chain is used anywhere else
    (otherwise permuting the conv would change other consumers).  Anything else is left as CRD.
    """
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    inits = {init.name: init for init in graph.initializer}

    rewritten = 0
    for node in graph.node:
        if node.op_type != "DepthToSpace":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("mode", b"DCR") not in (b"CRD", "CRD"):
            continue
        block = int(attrs["blocksize"])
        conv = _feeding_conv(node.input[0], producers, consumers, graph_outputs)
        if conv is None or not all(name in inits for name in conv.input[1:]):
            continue
        if any(a.name == "group" and a.i != 1 for a in conv.attribute):
            continue
        weight = numpy_helper.to_array(inits[conv.input[1]])
        if weight.shape[0] % (block * block):
            continue
        perm = _dcr_permutation(weight.shape[0], block)
        for slot in range(1, len(conv.input)):
            name = conv.input[slot]
            permuted = numpy_helper.to_array(inits[name])[perm]
            if consumers.get(name, 0) > 1:  # shared initializer: give this conv its own copy
                name = f"{name}_dcr{rewritten}"
                graph.initializer.append(numpy_helper.from_array(permuted, name))
                conv.input[slot] = name
            else:
                inits[name].CopyFrom(numpy_helper.from_array(permuted, name))
        for attr in node.attribute:
            if attr.name == "mode":
                attr.s = b"DCR"
        rewritten += 1
    if rewritten:
        onnx.save(model, str(onnx_path))
    return rewritten


def _feeding_conv(tensor: str, producers: dict[str, onnx.NodeProto], consumers: dict[str, int],
                  graph_outputs: set[str]) -> onnx.NodeProto | None:
    """The Conv that feeds ``tensor`` through elementwise ops only, with no side consumers; else None."""
    while True:
        if consumers.get(tensor, 0) != 1 or tensor in graph_outputs:
            return None
        node = producers.get(tensor)
        if node is None:
            return None
        if node.op_type == "Conv":
            return node
        if node.op_type not in ELEMENTWISE_OPS:
            return None
        tensor = node.input[0]

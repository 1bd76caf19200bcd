"""Layers TFLite runs as several INT8 ops, written out as those ops so QAT fake-quantizes each one.

``compress.quantization.qat`` annotates the exported aten graph op by op as TFLite quantizes it; a layer that
aten keeps as one node but TFLite splits into several re-quantized ops would be fake-quantized once, so QAT
would train against an error TFLite does not make.  ``mirror_tflite_ops`` swaps such layers (in a copy the QAT
graph is built from) for twins made of the same ops TFLite runs, holding the same parameters.
"""
from __future__ import annotations

import torch
from torch import nn


class TFLiteInstanceNorm(nn.Module):
    """``nn.InstanceNorm2d`` written as the ops TFLite runs for it, so QAT fake-quantizes each one.

    onnx2tf lowers ONNX ``InstanceNormalization`` to MEAN, SQUARED_DIFFERENCE, MEAN, ADD (eps), RSQRT, then
    SUB and MUL (1/std) or, with affine parameters, SUB, MUL (scale), MUL (1/std), ADD (shift), and TFLite's
    INT8 model re-quantizes every one of those outputs per tensor.  That is where an instance-norm network
    loses its INT8 quality: a channel of tiny variance gives a large 1/sqrt that one int8 scale shares with
    every other channel.  ``aten.instance_norm`` is a single node, fake-quantized once at its output, so QAT on
    it trains against an error TFLite does not make and never sees the one it does.  Same parameter names as
    the module it replaces (``weight``, ``bias``), so the fine-tuned values copy back into the original
    ``InstanceNorm2d``.
    """

    def __init__(self, norm: nn.InstanceNorm2d) -> None:
        super().__init__()
        if norm.track_running_stats:
            raise ValueError("TFLiteInstanceNorm mirrors instance norm without running statistics only")
        self.eps = float(norm.eps)
        self.weight = norm.weight  # the same Parameters (None without affine)
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)  # MEAN
        variance = torch.square(x - mean).mean(dim=(2, 3), keepdim=True)  # SQUARED_DIFFERENCE, MEAN
        # ADD, RSQRT.  At INT8 a variance + eps below half the ADD's step rounds to 0, and TFLite's RSQRT then
        # saturates at its range's top; rsqrt(0) = inf would turn the fake-quant graph into NaNs instead, so the
        # input is held at eps (1/sqrt(eps): the largest value the float op can give, where that range ends)
        inverse_std = torch.rsqrt(torch.clamp_min(variance + self.eps, self.eps))
        centred = x - mean  # SUB
        if self.weight is None or self.bias is None:
            return centred * inverse_std  # MUL
        # onnx2tf's order: the scale first, then 1/std, then the shift (MUL, MUL, ADD)
        return centred * self.weight.view(1, -1, 1, 1) * inverse_std + self.bias.view(1, -1, 1, 1)


def mirror_tflite_ops(model: nn.Module) -> int:
    """Replace, in place, every layer TFLite runs as several quantized ops by its op-by-op twin; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.InstanceNorm2d) and not child.track_running_stats:
                setattr(parent, name, TFLiteInstanceNorm(child))
                replaced += 1
    return replaced

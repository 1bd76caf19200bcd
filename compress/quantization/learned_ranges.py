"""Learned activation ranges for QAT, and carrying them into the TFLite model TensorFlow's quantizer builds.

min/max observers (``compress.quantization.qat``'s default) re-derive each range from the data, so QAT can
only adapt the *weights* to ranges TFLite will recompute anyway.  Here each activation's range is a trained
parameter instead (LSQ+, Bhalgat et al. 2020; PACT for the one-sided case): ``LearnedRangeQuant`` fake-quantizes
with TFLite's asymmetric per-tensor INT8 scheme on ``[lo, hi]`` and lets the task loss move ``lo`` and ``hi``
through the straight-through estimator (clipping error against rounding error).

Carrying the ranges over: the QAT graph and the TFLite graph name their tensors differently, but on the same
calibration frames the same tensor has the same values.  So each learned range is stored with its float
tensor's channel count and min/max over the calibration frames (``LearnedRange``), and matched to the tensors
of TFLite's calibrated model whose calibrated min/max and channel count agree (``match_to_tflite``): those
tensors get the learned range written before quantization (``compress.quantization.ranges``), every other
tensor keeps the range-setting method's.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

QMIN, QMAX = -128, 127
RANGE_GAIN = 100.0  # log-range parameters scaled so Adam at a fine-tune lr (~1e-4) moves a range ~1 % per step
Range = tuple[float, float]
MATCH_TOLERANCE = 1e-3  # |min/max difference| / range below which a TFLite tensor is the learned one


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class LearnedRangeQuant(nn.Module):
    """TFLite INT8 fake quantization of one activation on a trained range ``[lo, hi]`` (always containing 0).

    ``lo`` and ``hi`` are ``lo0 * exp(RANGE_GAIN * a)`` and ``hi0 * exp(RANGE_GAIN * b)``: positive scaling keeps
    each end on its side of zero (a ReLU output, ``lo0 = 0``, learns only its upper clip, as PACT does).
    ``enabled = False`` passes values through and records their min/max (``observe``).
    """

    lo0: torch.Tensor
    hi0: torch.Tensor

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.register_buffer("lo0", torch.tensor(min(float(lo), 0.0)))
        self.register_buffer("hi0", torch.tensor(max(float(hi), 1e-8)))
        self.log_lo = nn.Parameter(torch.zeros(()))
        self.log_hi = nn.Parameter(torch.zeros(()))
        self.enabled = True
        self.seen: tuple[float, float, int] | None = None

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lo0 * torch.exp(RANGE_GAIN * self.log_lo), self.hi0 * torch.exp(RANGE_GAIN * self.log_hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            low, high = float(x.detach().min()), float(x.detach().max())
            if self.seen is not None:
                low, high = min(low, self.seen[0]), max(high, self.seen[1])
            self.seen = (low, high, int(x.shape[1]) if x.dim() == 4 else int(x.shape[-1]))
            return x
        lo, hi = self.range()
        scale = (hi - lo) / (QMAX - QMIN)
        zero = torch.clamp(_round_ste(QMIN - lo / scale), QMIN, QMAX)
        q = torch.clamp(_round_ste(x / scale) + zero, QMIN, QMAX)
        return (q - zero) * scale


@dataclass(frozen=True)
class LearnedRange:
    """One learned range with the fingerprint that finds its tensor in TFLite: channels and float min/max."""

    lo: float
    hi: float
    channels: int
    float_min: float
    float_max: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def use_learned_ranges(prepared: nn.Module, fake_quant_type: Any, is_activation: Any) -> int:
    """Replace every activation fake-quant module of ``prepared`` (a torchao PT2E QAT graph) by a
    ``LearnedRangeQuant`` starting at its current range; modules shared by several tensors stay shared.
    Fixed-parameter outputs (sigmoid, tanh) are not ``is_activation`` and stay as they are.  Returns the count."""
    replaced: dict[int, LearnedRangeQuant] = {}
    for owner in prepared.modules():
        for name, module in list(owner.named_children()):
            child: Any = module
            if child.__class__ is not fake_quant_type or not is_activation(child):
                continue
            if id(child) not in replaced:
                scale, zero = float(child.scale.flatten()[0]), int(child.zero_point.flatten()[0])
                qmin, qmax = child.quant_min, child.quant_max
                replaced[id(child)] = LearnedRangeQuant((qmin - zero) * scale, (qmax - zero) * scale).to(
                    child.scale.device)
            setattr(owner, name, replaced[id(child)])
    return len(replaced)


def learned_modules(model: nn.Module) -> list[LearnedRangeQuant]:
    return list(dict.fromkeys(m for m in model.modules() if isinstance(m, LearnedRangeQuant)))


@torch.no_grad()
def learned_ranges(prepared: nn.Module, frames: torch.Tensor) -> list[LearnedRange]:
    """Each learned range with its tensor's float min/max over ``frames`` (every fake quantization off)."""
    modules = learned_modules(prepared)
    fake_quants: list[Any] = [m for m in prepared.modules() if hasattr(m, "disable_fake_quant")]
    for module in modules:
        module.enabled, module.seen = False, None
    for fake_quant in fake_quants:
        fake_quant.disable_fake_quant()
    prepared.eval()
    try:
        prepared(frames)
    finally:
        for module in modules:
            module.enabled = True
        for fake_quant in fake_quants:
            fake_quant.enable_fake_quant()
    out = []
    for module in modules:
        if module.seen is None:  # not on the path of this input
            continue
        lo, hi = (float(v) for v in module.range())
        out.append(LearnedRange(lo=min(lo, 0.0), hi=max(hi, 0.0), channels=module.seen[2], float_min=module.seen[0],
                                float_max=module.seen[1]))
    return out


def match_to_tflite(calibrated_ranges: dict[str, tuple[float, float]], channels: dict[str, int],
                    learned: Iterable[LearnedRange]) -> dict[str, tuple[float, float]]:
    """``{tflite tensor: learned range}`` for every calibrated tensor whose channel count and calibrated min/max
    agree with a learned range's fingerprint (the closest one when several do)."""
    learned = list(learned)
    out: dict[str, tuple[float, float]] = {}
    for name, (tmin, tmax) in calibrated_ranges.items():
        best: tuple[float, LearnedRange] | None = None
        for item in learned:
            if channels.get(name) != item.channels:
                continue
            span = max(item.float_max - item.float_min, 1e-12)
            gap = max(abs(tmin - item.float_min), abs(tmax - item.float_max)) / span
            if gap <= MATCH_TOLERANCE and (best is None or gap < best[0]):
                best = (gap, item)
        if best is not None:
            out[name] = (best[1].lo, best[1].hi)
    return out


def tflite_channels(calibrated: bytes) -> dict[str, int]:
    """Last-dimension size of every tensor in the calibrated model (NHWC: the channel count)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    out = {}
    for tensor in model.subgraphs[0].tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        if tensor.shape is not None and len(tensor.shape):
            out[name] = int(tensor.shape[-1])
    return out


class LearnedRangeMatcher:
    """``RangeSetting(given=...)`` callable: the learned ranges matched to a calibrated model's tensors.
    After a call ``matched`` counts the TFLite tensors that got a learned range."""

    def __init__(self, learned: Iterable[LearnedRange]) -> None:
        self.learned = list(learned)
        self.matched = 0

    def __call__(self, calibrated: bytes, calibrated_ranges: dict[str, Range]) -> dict[str, Range]:
        out = match_to_tflite(calibrated_ranges, tflite_channels(calibrated), self.learned)
        self.matched = len(out)
        return out

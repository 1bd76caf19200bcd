"""Learned activation ranges: the fake quantizer trains its range, QAT returns the ranges with their
fingerprints, and the fingerprints find the TFLite tensors whose INT8 scales then use the learned ranges."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compress.export.onnx_export import export_onnx
from compress.export.tflite import ConverterFactory, convert_onnx_to_tflite
from compress.quantization.learned_ranges import (
    RANGE_GAIN,
    LearnedRange,
    LearnedRangeMatcher,
    LearnedRangeQuant,
    learned_modules,
    match_to_tflite,
)
from compress.quantization.qat import QATResult, qat_finetune
from compress.quantization.ranges import RangeSetting
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.trainer import TrainSpec
from students import create_student


def test_fake_quant_puts_values_on_the_int8_grid_of_its_range() -> None:
    quant = LearnedRangeQuant(-1.0, 3.0)
    x = torch.linspace(-2.0, 5.0, 101)
    y = quant(x)
    scale = 4.0 / 255
    assert float(y.min()) == pytest.approx(-1.0, abs=scale) and float(y.max()) == pytest.approx(3.0, abs=scale)
    steps = (y - y.min()) / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # on the grid


def test_clipped_values_pull_the_upper_end_up() -> None:
    quant = LearnedRangeQuant(0.0, 1.0)
    x = torch.full((64,), 2.0)  # every value above the range: the clipping error shrinks as hi grows
    ((quant(x) - x) ** 2).mean().backward()
    assert quant.log_hi.grad is not None and float(quant.log_hi.grad) < 0  # gradient descent raises hi
    assert quant.log_lo.grad is not None and float(quant.log_lo.grad) == 0  # lo0 = 0: one-sided, as PACT
    with torch.no_grad():
        quant.log_hi += 0.01 / RANGE_GAIN
    assert float(quant.range()[1]) == pytest.approx(float(np.exp(0.01)), rel=1e-5)


def test_disabled_quant_passes_values_and_records_their_fingerprint() -> None:
    quant = LearnedRangeQuant(-1.0, 1.0)
    quant.enabled = False
    x = torch.randn(2, 5, 4, 4) * 3
    assert torch.equal(quant(x), x)
    assert quant.seen == (float(x.min()), float(x.max()), 5)


def test_matching_needs_the_channel_count_and_the_calibrated_min_max() -> None:
    learned = [LearnedRange(lo=-0.5, hi=2.0, channels=8, float_min=-1.0, float_max=4.0),
               LearnedRange(lo=0.0, hi=1.0, channels=8, float_min=0.0, float_max=3.0)]
    calibrated = {"a": (-1.0, 4.0 + 1e-4), "b": (0.0, 3.0), "c": (-1.0, 4.0), "d": (0.0, 3.5)}
    channels = {"a": 8, "b": 8, "c": 16, "d": 8}
    assert match_to_tflite(calibrated, channels, learned) == {"a": (-0.5, 2.0), "b": (0.0, 1.0)}


@pytest.fixture(scope="module")
def learned_qat() -> tuple[torch.nn.Module, QATResult, torch.Tensor]:
    pairs = load_embedded("train", seed=0, max_side=96)
    dataset = PairedPatchDataset(pairs, patch_size=16, patches_per_image=2, seed=0)
    calibration = torch.from_numpy(np.stack([p.raw[:, :32, :32] for p in pairs]))
    torch.manual_seed(0)
    model = create_student("smallnet", width=8).eval()
    result = qat_finetune(model, dataset, TrainSpec(steps=8, lr=1e-3, batch_size=4, log_every=10),
                          calibration=calibration, kd_weight=0.5, seed=0, learn_ranges=True)
    return model, result, calibration


def test_qat_learns_and_returns_activation_ranges(learned_qat) -> None:
    _, result, _ = learned_qat
    assert learned_modules(result.prepared)  # the activation fake quants were replaced
    ranges = result.learned_ranges
    assert len(ranges) >= 3 and all(r.lo <= 0.0 <= r.hi for r in ranges)
    moved = [r for r in ranges if abs(r.hi - r.float_max) > 1e-4 * max(abs(r.float_max), 1.0)]
    assert moved  # trained away from the float min/max they started from
    assert all(r.channels > 0 and r.float_min <= r.float_max for r in ranges)


@pytest.mark.slow
def test_learned_ranges_reach_the_int8_tensors(learned_qat, tmp_path: Path) -> None:
    from ai_edge_litert.tools import flatbuffer_utils

    _, result, calibration = learned_qat
    onnx_path = export_onnx(result.model, tmp_path / "qat.onnx", (1, *calibration.shape[1:]))
    matcher = LearnedRangeMatcher(result.learned_ranges)
    hook = RangeSetting("minmax", key="int8_learned", given=matcher)

    def build(factory: ConverterFactory, built: dict[str, Path], work: Path) -> dict[str, Path]:
        return hook(factory, built, work)

    files = convert_onnx_to_tflite(onnx_path, tmp_path / "tflite", calibration.numpy(), modes=[], extra=build)
    assert matcher.matched >= 2
    learned_set = {(r.lo, r.hi) for r in result.learned_ranges}
    written = {name: rng for name, rng in hook.ranges.items() if rng in learned_set}
    assert len(written) == matcher.matched
    model = flatbuffer_utils.read_model(str(files["int8_learned"]))
    scales = {(t.name.decode() if isinstance(t.name, bytes) else t.name): float(t.quantization.scale[0])
              for t in model.subgraphs[0].tensors if t.quantization is not None and t.quantization.scale is not None
              and len(t.quantization.scale) == 1}
    checked = [name for name in written if name in scales]
    assert checked
    for name in checked:
        lo, hi = written[name]
        assert scales[name] == pytest.approx((hi - lo) / 255, rel=0.02), name

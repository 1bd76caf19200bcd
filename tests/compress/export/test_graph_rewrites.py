"""XNNPACK INT8 rewrites: exact in ONNX (onnxruntime before/after) and the slow ops gone from TFLite.

One tiny net holds every rewritable pattern (PReLU, HardSwish, Clip both-sided and one-sided, Max,
a standalone Relu after Concat); the slow test converts it before and after the rewrite once each.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compress.export.graph_rewrites import REWRITABLE_OPS, rewrite_for_xnnpack_int8, untie_shared_reduce_extrema
from compress.export.onnx_export import export_onnx

SHAPE = (1, 4, 16, 16)
SLOW_INT8_OPS = {"PRELU", "HARD_SWISH", "MINIMUM", "MAXIMUM", "RELU"}


class AllPatterns(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 12, 3, padding=1)
        self.prelu = nn.PReLU(8)
        self.hswish = nn.Hardswish()
        with torch.no_grad():
            self.prelu.weight.copy_(torch.linspace(-0.3, 0.6, 8))  # per-channel, one negative slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.prelu(self.c1(x))
        z = self.hswish(self.c2(y))
        w = torch.clamp(z, -0.5, 1.0) + torch.maximum(z, y) - torch.clamp(y, max=0.25) + torch.clamp(z, min=-0.1)
        w = torch.relu(torch.cat([w, y], 1)[:, :8])  # a Relu TFLite cannot fuse into the op before it
        return nn.functional.pixel_shuffle(self.c3(w), 2)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"raw": x})[0]


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("rewrites")
    before = export_onnx(AllPatterns().eval(), folder / "before.onnx", SHAPE)
    after = folder / "after.onnx"
    shutil.copy(before, after)
    return before, after, rewrite_for_xnnpack_int8(after)


def test_rewrite_counts_every_pattern(onnx_pair: tuple[Path, Path, dict[str, int]]) -> None:
    _, after, counts = onnx_pair
    assert counts == {"PRelu": 1, "HardSwish": 1, "Clip": 3, "Max": 1, "Relu": 1}
    import onnx

    left = {n.op_type for n in onnx.load(str(after)).graph.node}
    assert not left & {"PRelu", "HardSwish", "Clip", "Max"}
    assert rewrite_for_xnnpack_int8(after) == {}  # nothing left to rewrite: idempotent


def test_rewrite_is_numerically_equivalent(onnx_pair: tuple[Path, Path, dict[str, int]]) -> None:
    before, after, _ = onnx_pair
    x = (3.0 * np.random.default_rng(0).standard_normal(SHAPE)).astype(np.float32)  # both sides of every kink
    want, got = _run(before, x), _run(after, x)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_fused_relu_and_relu6_are_left_alone(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6())
    path = export_onnx(net.eval(), tmp_path / "fused.onnx", SHAPE)
    assert rewrite_for_xnnpack_int8(path) == {}


def test_unknown_op_is_a_clear_error(onnx_pair: tuple[Path, Path, dict[str, int]]) -> None:
    with pytest.raises(ValueError, match="no XNNPACK INT8 rewrite for \\['Tanh'\\]"):
        rewrite_for_xnnpack_int8(onnx_pair[1], ops=[*REWRITABLE_OPS, "Tanh"])


@pytest.mark.slow
def test_int8_tflite_runs_wholly_on_xnnpack_after_rewrite(onnx_pair: tuple[Path, Path, dict[str, int]],
                                                         tmp_path: Path) -> None:
    from compress.export.tflite import convert_onnx_to_tflite
    from compress.export.tflite_inspect import tflite_ops
    from compress.runtime.xnnpack import xnnpack_report

    before, after, _ = onnx_pair
    frames = np.random.default_rng(1).standard_normal((4, *SHAPE[1:])).astype(np.float32)
    old = convert_onnx_to_tflite(before, tmp_path / "before", frames, modes=["int8"])["int8"]
    new = convert_onnx_to_tflite(after, tmp_path / "after", frames, modes=["int8"])["int8"]
    old_report = xnnpack_report(old)
    assert SLOW_INT8_OPS <= set(old_report["undelegated"]) and old_report["partitions"] > 1
    assert not SLOW_INT8_OPS & set(tflite_ops(new))
    assert xnnpack_report(new) == {"undelegated": [], "partitions": 1, "ops": len(tflite_ops(new))}


def test_export_stage_converts_int8_from_a_rewritten_copy_only_when_needed(tmp_path: Path) -> None:
    from recipes.stages.export import _xnnpack_int8_source
    from students import create_student

    torch.manual_seed(0)
    original = export_onnx(AllPatterns().eval(), tmp_path / "net.onnx", SHAPE)
    before = original.read_bytes()
    source, counts = _xnnpack_int8_source(original, tmp_path)
    assert source != original and source.parent == tmp_path and counts["PRelu"] == 1 and counts["HardSwish"] == 1
    assert original.read_bytes() == before  # fp32 and the other variants keep the original graph
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p)).run(None, {"raw": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(source), run(original), atol=1e-5)

    plain = export_onnx(create_student("smallnet", width=8).eval(), tmp_path / "smallnet.onnx", SHAPE)
    assert _xnnpack_int8_source(plain, tmp_path) == (plain, {})  # nothing to rewrite: one conversion
    assert not list(tmp_path.glob("smallnet_xnnpack*"))


class SharedChannelMax(nn.Module):
    """CBAM/FGAM spatial attention on a feature the output conv reads too: ``out(e) + sig(conv([mean_c e, max_c e]))``.

    Channel 0's bias keeps the channel max (and mean) positive, so the quantizer's range for them starts
    at 0 while ``e`` itself is half negative.
    """

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(4, 8, 3, padding=1)
        self.spatial = nn.Conv2d(2, 1, 5, padding=2, bias=False)
        self.out = nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            self.feat.bias.copy_(torch.tensor([3.0, 0, 0, 0, 0, 0, 0, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.feat(x)
        pooled = torch.cat([e.mean(1, keepdim=True), e.amax(1, keepdim=True), -e.amin(1, keepdim=True)], 1)
        return self.out(e) + torch.sigmoid(self.spatial(pooled[:, :2]) + 0.1 * pooled[:, 2:])


def test_untie_reduce_extrema_is_exact_and_skips_single_reader_reductions(tmp_path: Path) -> None:
    import onnx

    torch.manual_seed(0)
    before = export_onnx(SharedChannelMax().eval(), tmp_path / "before.onnx", SHAPE)
    model = onnx.load(str(before))
    assert untie_shared_reduce_extrema(model) == 2  # the max and the min both read the shared feature
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ReduceMax") == 1 and ops.count("ReduceMin") == 1 and ops.count("Mul") >= 4
    after = tmp_path / "after.onnx"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(after))
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(_run(after, x), _run(before, x))  # negation is exact

    class ChannelMax(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x).amax(1, keepdim=True)  # the Relu output has one reader: left alone

    single = onnx.load(str(export_onnx(ChannelMax().eval(), tmp_path / "single.onnx", SHAPE)))
    assert untie_shared_reduce_extrema(single) == 0


@pytest.mark.slow
def test_int8_tflite_keeps_the_negatives_of_a_feature_whose_channel_max_is_taken(tmp_path: Path) -> None:
    from compress.export.tflite import convert_onnx_to_tflite
    from compress.runtime.parity import run_tflite
    from distill.metrics import psnr_db

    torch.manual_seed(0)
    path = export_onnx(SharedChannelMax().eval(), tmp_path / "net.onnx", SHAPE)
    calibration = np.random.default_rng(1).random((8, *SHAPE[1:]), dtype=np.float32)
    built = convert_onnx_to_tflite(path, tmp_path / "tflite", calibration, int8_io=True, modes=("int8",))
    x = np.random.default_rng(3).random((2, *SHAPE[1:]), dtype=np.float32)
    reference = run_tflite(built["fp32"], x)
    spread = float(reference.max() - reference.min())
    # REDUCE_MAX is a same-scale op: untied, the feature was clipped to the max's range [0, ...] (16 dB)
    parity = psnr_db(run_tflite(built["int8"], x), reference, data_range=spread)
    assert parity >= 35.0, parity


class WideSkipConcat(nn.Module):
    """A U-Net merge: a unit-range skip concatenated with a feature of ~100x its range, read by one conv."""

    def __init__(self, shared: bool = False, groups: int = 1) -> None:
        super().__init__()
        self.skip, self.wide = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
        self.merge = nn.Conv2d(12, 12, 3, padding=1, groups=groups)
        self.shared = shared
        with torch.no_grad():  # the merge weighs both inputs alike in the output, as a trained decoder would
            self.merge.weight[:, 4 // groups:] *= 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.tanh(self.skip(x))
        merged = torch.cat([skip, 100.0 * self.wide(x)], 1)
        out = self.merge(merged)
        return nn.functional.pixel_shuffle(out + merged[:, :12] if self.shared else out, 2)


def test_concat_read_by_one_conv_is_split_exactly_and_other_concats_are_left(tmp_path: Path) -> None:
    import onnx

    torch.manual_seed(0)
    path = export_onnx(WideSkipConcat().eval(), tmp_path / "merge.onnx", SHAPE)
    before = tmp_path / "before.onnx"
    shutil.copy(path, before)
    assert rewrite_for_xnnpack_int8(path) == {"Concat": 1}
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Concat" not in ops and ops.count("Conv") == 4 and ops.count("Add") == 1
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(_run(path, x), _run(before, x), rtol=1e-5, atol=1e-5)
    for kept in (WideSkipConcat(shared=True), WideSkipConcat(groups=3)):  # two readers; a grouped conv
        other = export_onnx(kept.eval(), tmp_path / "kept.onnx", SHAPE)
        assert "Concat" not in rewrite_for_xnnpack_int8(other)


@pytest.mark.slow
def test_split_concat_gives_the_narrow_skip_its_own_int8_scale(tmp_path: Path) -> None:
    from compress.export.tflite import convert_onnx_to_tflite
    from compress.runtime.parity import run_tflite
    from distill.metrics import psnr_db

    torch.manual_seed(0)
    tied = export_onnx(WideSkipConcat().eval(), tmp_path / "tied.onnx", SHAPE)
    split = tmp_path / "split.onnx"
    shutil.copy(tied, split)
    rewrite_for_xnnpack_int8(split, ops=["Concat"])
    calibration = np.random.default_rng(1).random((8, *SHAPE[1:]), dtype=np.float32)
    x = np.random.default_rng(3).random((2, *SHAPE[1:]), dtype=np.float32)
    parity = {}
    for name, path in (("tied", tied), ("split", split)):
        built = convert_onnx_to_tflite(path, tmp_path / name, calibration, int8_io=False, modes=("int8",))
        reference = run_tflite(built["fp32"], x)
        parity[name] = psnr_db(run_tflite(built["int8"], x), reference, data_range=float(np.ptp(reference)))
    # tied, the skip is rounded at the wide feature's step (~100x its own); split, at its own
    assert parity["split"] >= parity["tied"] + 6.0, parity

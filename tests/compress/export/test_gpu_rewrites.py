"""The Expand -> Add-of-zeros rewrite: same outputs, and the GPU delegate's op rules then take the graph."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compress.export.delegates import gpu_rule_report
from compress.export.gpu_rewrites import rewrite_expand_for_gpu
from compress.export.onnx_export import export_onnx
from compress.runtime.parity import run_onnx


class GlobalVector(nn.Module):
    """LW-ISP's pattern: a per-channel vector from global pooling, expanded and concatenated to the map."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.tail = nn.Conv2d(16, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.head(x))
        v = torch.relu(self.fc(f.mean(dim=(2, 3), keepdim=True)))
        return self.shuffle(self.tail(torch.cat([f, v.expand(-1, -1, f.shape[2], f.shape[3])], dim=1)))


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, nn.Module]:
    torch.manual_seed(0)
    model = GlobalVector().eval()
    folder = tmp_path_factory.mktemp("gpu_rewrite")
    original = export_onnx(model, folder / "a" / "model.onnx", (1, 4, 16, 16))
    rewritten = folder / "b" / "model.onnx"
    rewritten.parent.mkdir()
    shutil.copyfile(original, rewritten)
    assert rewrite_expand_for_gpu(rewritten) == 1
    return original, rewritten, model


def test_the_rewrite_replaces_expand_and_keeps_the_output(onnx_pair) -> None:
    original, rewritten, _ = onnx_pair
    ops = [n.op_type for n in onnx.load(str(rewritten)).graph.node]
    assert "Expand" not in ops and "Expand" in [n.op_type for n in onnx.load(str(original)).graph.node]
    x = np.random.default_rng(0).random((1, 4, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(run_onnx(rewritten, x), run_onnx(original, x))
    assert rewrite_expand_for_gpu(rewritten) == 0  # nothing left to rewrite: the file is not touched


@pytest.mark.slow
def test_the_gpu_rules_take_the_rewritten_tflite(onnx_pair) -> None:
    from compress.export.tflite import convert_onnx_to_tflite
    from compress.runtime.parity import run_tflite

    original, rewritten, _ = onnx_pair
    before = convert_onnx_to_tflite(original, original.parent / "tflite", None, modes=())["fp32"]
    after = convert_onnx_to_tflite(rewritten, rewritten.parent / "tflite", None, modes=())["fp32"]
    assert [f["op"] for f in gpu_rule_report(before)["flagged"]] == ["MUL"]
    assert gpu_rule_report(after) == {"compatible": True, "flagged": []}
    x = np.random.default_rng(1).random((1, 4, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(run_tflite(after, x), run_tflite(before, x))

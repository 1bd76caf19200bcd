"""Every registered teacher, at its registry tiny config: ONNX export with >= 60 dB parity against PyTorch."""
import numpy as np
import pytest
import torch

from compress.export.onnx_export import export_onnx
from compress.runtime.parity import run_onnx
from distill.metrics import psnr_db
from teachers import TEACHERS, create_teacher, list_teachers


@pytest.mark.parametrize("name", list_teachers())
def test_onnx_export_matches_pytorch(name: str, tmp_path) -> None:
    info = TEACHERS.info(name)
    side = max(64, info.min_input) // info.input_multiple * info.input_multiple
    in_shape = (1, info.in_channels, side, side)
    torch.manual_seed(0)
    model = create_teacher(name, **info.tiny_config).eval()
    if name == "aaunet":
        with torch.no_grad():
            model.attention.gamma.fill_(0.5)  # export the attention path, not the identity it starts as
    path = export_onnx(model, tmp_path / f"{name}.onnx", in_shape)
    x = np.random.default_rng(0).random(in_shape, dtype=np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    exported = run_onnx(path, x)
    assert exported.shape == (1, 3, side * info.upscale, side * info.upscale)
    assert psnr_db(exported, reference) >= 60.0

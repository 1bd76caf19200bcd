"""Every registered teacher exports to ONNX with >= 60 dB parity against PyTorch (tiny widths)."""
import numpy as np
import pytest
import torch

from compress.onnx_export import export_onnx
from compress.parity import psnr_db, run_onnx
from teachers import create_teacher, list_teachers

TINY_CONFIGS = {
    "punet": ({"base_width": 4}, (1, 4, 64, 64), (1, 3, 128, 128)),
    "aaunet": ({"base_width": 4}, (1, 4, 64, 64), (1, 3, 128, 128)),
    "pynet": ({"width": 0.125}, (1, 4, 64, 64), (1, 3, 128, 128)),
    "smallnet_clean": ({"width": 8}, (1, 3, 64, 64), (1, 3, 64, 64)),
}


def test_every_teacher_has_an_export_check() -> None:
    assert set(list_teachers()) == set(TINY_CONFIGS)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_onnx_export_matches_pytorch(name: str, tmp_path) -> None:
    config, in_shape, out_shape = TINY_CONFIGS[name]
    torch.manual_seed(0)
    model = create_teacher(name, **config).eval()
    if name == "aaunet":
        with torch.no_grad():
            model.attention.gamma.fill_(0.5)  # export the attention path, not the identity it starts as
    path = export_onnx(model, tmp_path / f"{name}.onnx", in_shape)
    x = np.random.default_rng(0).random(in_shape, dtype=np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    exported = run_onnx(path, x)
    assert exported.shape == out_shape
    assert psnr_db(exported, reference) >= 60.0

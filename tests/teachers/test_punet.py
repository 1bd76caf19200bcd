import pytest
import torch

from teachers import create_teacher, list_teachers


def test_punet_shapes_and_output_range() -> None:
    model = create_teacher("punet", base_width=4)
    out = model(torch.rand(1, 4, 32, 48))
    assert out.shape == (1, 3, 64, 96)
    # tanh(x) * 0.58 + 0.5 bounds the output to [-0.08, 1.08] like the reference model
    assert out.min() >= -0.08 - 1e-6 and out.max() <= 1.08 + 1e-6


def test_punet_width_scales_parameters_quadratically() -> None:
    small = sum(p.numel() for p in create_teacher("punet", base_width=4).parameters())
    large = sum(p.numel() for p in create_teacher("punet", base_width=8).parameters())
    assert 3.5 < large / small < 4.1


def test_punet_instance_norm_option_adds_norm_layers() -> None:
    model = create_teacher("punet", base_width=4, instance_norm=True)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in model.modules())


def test_punet_rejects_too_small_width() -> None:
    with pytest.raises(ValueError, match="base_width"):
        create_teacher("punet", base_width=2)
    assert {"punet", "pynet", "aaunet", "smallnet_clean"} <= set(list_teachers())

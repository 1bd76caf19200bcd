"""Smallnet's MAI 2022 descendants: MiAlgo's 12-channel Smallnet and JMU-CVLab's non-linear ISP head."""
from __future__ import annotations

import pytest
import torch
from timm.layers.cbam import CbamModule  # after students: torchvision on CPU torch (teachers.torch_compat)

import students.smallnet_variants  # noqa: F401  (registers smallnet_mialgo and smallnet_jmu)
from compress.fold import fold_model
from students import STUDENTS, create_student
from students.smallnet import Smallnet
from students.smallnet_variants import LearnableGamma, LearnableToneMap, SmallnetJMU


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mialgo_is_smallnet_with_12_channels_and_3060_parameters() -> None:
    model = create_student("smallnet_mialgo")
    assert type(model) is Smallnet
    assert [model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels] == [12, 12, 12]
    assert [_params(model.conv1), _params(model.conv2), _params(model.conv3)] == [444, 1_308, 1_308]
    assert _params(model) == 3_060
    assert _params(create_student("smallnet_mialgo", width=16)) == 4_652  # back to dh_isp's Smallnet


def test_jmu_adds_six_curve_parameters_and_timm_cbam_to_smallnet() -> None:
    model = create_student("smallnet_jmu")
    assert isinstance(model, Smallnet) and isinstance(model.cbam, CbamModule)
    assert _params(model.cbam) == 124  # MLP 3->3->3 with biases (24), 7x7 conv 2->1 (98), its BatchNorm (2)
    assert _params(model) == 4_652 + 3 + 3 + 124 == 4_782
    assert _params(create_student("smallnet_jmu", width=6)) == 1_342
    assert _params(create_student("smallnet_jmu", cbam_hidden=1).cbam) == 110  # CBAM's own 1/16 reduction


def test_jmu_cbam_gates_start_open() -> None:
    """At timm's init CBAM's two gates halve the image each; here they pass ~0.9 of it."""
    torch.manual_seed(0)
    model = create_student("smallnet_jmu").train()  # BatchNorm on batch statistics, as in the first steps
    rgb = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ratio = model.cbam(rgb) / rgb.clamp_min(1e-6)
        assert float(ratio.mean()) >= 0.85 and float(ratio.flatten().quantile(0.01)) >= 0.7  # timm init: ~0.25
        assert float(model.eval().cbam(rgb).div(rgb.clamp_min(1e-6)).mean()) >= 0.85  # and on running statistics


def test_registry_records_reported_sizes_not_parameter_counts() -> None:
    for name, mb in [("smallnet_mialgo", 0.014), ("smallnet_jmu", 0.041)]:
        paper = STUDENTS.info(name).paper
        assert "params" not in paper and paper["tflite_mb"] == mb


@pytest.mark.parametrize("name", ["smallnet_mialgo", "smallnet_jmu"])
@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (2, 4, 16, 24), (1, 4, 9, 5)])
def test_shapes_at_several_sizes(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        out = create_student(name, width=6).eval()(torch.rand(shape))
    n, _, h, w = shape
    assert out.shape == (n, 3, 2 * h, 2 * w)
    assert out.min() >= 0


def test_jmu_output_stays_in_unit_interval_whatever_the_trunk_gives() -> None:
    torch.manual_seed(0)
    model = create_student("smallnet_jmu", width=6).eval()
    with torch.no_grad():
        model.conv3.bias.fill_(2.0)  # trunk output well above 1
        out = model(torch.rand(2, 4, 8, 8) * 10)
        isp = model.isp(torch.rand(2, 4, 8, 8) * 10)
    assert out.min() >= 0 and out.max() <= 1
    assert isp.min() >= 0 and isp.max() <= 1


def test_gamma_one_and_identity_tone_map_give_the_plain_smallnet_path() -> None:
    torch.manual_seed(0)
    jmu = create_student("smallnet_jmu", width=8, gamma=1.0, tone_strength=0.0).eval()
    plain = Smallnet(width=8).eval()
    plain.load_state_dict({k: v for k, v in jmu.state_dict().items() if k.startswith("conv")})
    x = torch.rand(2, 4, 6, 10)
    with torch.no_grad():
        rgb = plain(x).clamp(0, 1)
        assert torch.allclose(jmu.isp(x), rgb, atol=1e-6)
        assert torch.allclose(jmu(x), jmu.cbam(rgb), atol=1e-6)


def test_gamma_curve_fixes_the_ends_brightens_mid_tones_and_is_identity_at_one() -> None:
    x = torch.linspace(0, 1, 101).view(1, 1, 101, 1).expand(1, 3, 101, 1)
    with torch.no_grad():
        assert torch.allclose(LearnableGamma(3, 1.0)(x), x, atol=1e-6)
        y = LearnableGamma(3, 2.2)(x)
    assert torch.allclose(y[:, :, [0, -1]], torch.tensor([0.0, 1.0]).view(1, 1, 2, 1), atol=1e-6)
    assert (y[:, :, 1:-1] > x[:, :, 1:-1]).all() and (y.diff(dim=2) > 0).all()
    assert abs(y[0, 0, 18].item() - 0.18 ** (1 / 2.2)) < 0.01
    assert torch.allclose(LearnableGamma(3, 2.2).gamma, torch.full((1, 3, 1, 1), 2.2))
    with pytest.raises(ValueError, match="gamma"):
        LearnableGamma(3, 0.0)


def test_tone_map_spans_identity_to_smoothstep_and_stays_in_unit_interval() -> None:
    x = torch.linspace(0, 1, 101).view(1, 1, 101, 1).expand(1, 3, 101, 1)
    with torch.no_grad():
        assert torch.equal(LearnableToneMap(3, 0.0)(x), x)
        assert torch.allclose(LearnableToneMap(3, 1.0)(x), 3 * x**2 - 2 * x**3, atol=1e-6)
        for strength in (-2.0, -1.0, 0.5, 1.0):  # the monotone range
            y = LearnableToneMap(3, strength)(x)
            assert (y.diff(dim=2) >= -1e-6).all() and y.min() >= 0 and y.max() <= 1
        y = LearnableToneMap(3, 5.0)(x)  # out of range: the clamp still holds [0, 1]
    assert y.min() >= 0 and y.max() <= 1


def test_cbam_gates_only_attenuate() -> None:
    torch.manual_seed(0)
    model = create_student("smallnet_jmu", width=6).eval()
    x = torch.rand(2, 4, 8, 12)
    with torch.no_grad():
        rgb = model.isp(x)
        channel_gate = model.cbam.channel(rgb) / rgb.clamp_min(1e-6)
        out = model(x)
    assert (out <= rgb + 1e-6).all() and (out >= 0).all()
    positive = rgb > 1e-3
    assert channel_gate[positive].min() >= 0 and channel_gate[positive].max() <= 1


def test_gradients_stay_finite_when_the_trunk_outputs_exact_zeros() -> None:
    model = create_student("smallnet_jmu", width=6)
    with torch.no_grad():
        model.conv3.bias.fill_(-100.0)  # ReLU -> exact zeros into the gamma curve
    x = torch.rand(2, 4, 6, 6, requires_grad=True)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    zero = torch.zeros(1, 3, 1, 1, requires_grad=True)
    LearnableGamma(3, 2.2)(zero).sum().backward()
    assert torch.isfinite(zero.grad).all() and (zero.grad > 0).all()  # a bare x ** (1 / 2.2) gives inf


def test_backward_reaches_the_curves_and_cbam() -> None:
    torch.manual_seed(0)
    model = create_student("smallnet_jmu", width=6)
    with torch.no_grad():
        model.cbam.channel.fc1.weight.abs_()  # live hidden units on the non-negative RGB (see the docstring)
    model(torch.rand(2, 4, 8, 8)).mean().backward()
    names = ("gamma.log_gamma", "tone.strength", "cbam.channel.fc1.weight", "cbam.spatial.conv.conv.weight")
    for name in names:
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_fold_merges_the_cbam_batchnorm_without_changing_the_output() -> None:
    torch.manual_seed(0)
    model = SmallnetJMU(width=6, batch_norm=True).eval()
    bn = model.cbam.spatial.conv.bn
    with torch.no_grad():
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(0.5)
    folded, report = fold_model(model)
    assert report["conv_bn_folded"] == 4 and report["batchnorm_left"] == 0
    x = torch.rand(1, 4, 6, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-6)


def test_bad_widths_are_rejected() -> None:
    for name in ("smallnet_mialgo", "smallnet_jmu"):
        with pytest.raises(ValueError, match="width"):
            create_student(name, width=0)

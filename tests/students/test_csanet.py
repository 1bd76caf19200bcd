"""CSANet (MAI 2021, team AIISP): sizes, shapes, the double attention module and its two attentions."""
from __future__ import annotations

import pytest
import torch

import students.csanet  # noqa: F401  (registers csanet)
from students import STUDENTS, create_student
from students.csanet import ChannelAttention, CSANet, DoubleAttentionModule, SpatialAttention


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_has_16_channels_3_dams_and_26572_parameters() -> None:
    model = create_student("csanet")
    assert model.channels == 16 and len(model.dams) == 3
    # per DAM: two 3x3 convs (2 * 2,320) + depthwise 5x5 (416) + SE 16->4->16 (148) + 1x1 fusion 32->16 (528)
    assert _params(model.dams[0]) == 5_732
    assert _params(model) == 26_572
    assert _params(CSANet(num_dams=4)) == 32_304
    assert _params(create_student("csanet", **STUDENTS.info("csanet").tiny_config)) == 2_018


def test_registry_records_the_reported_size_not_a_parameter_count() -> None:
    info = STUDENTS.info("csanet")
    assert info.input_multiple == 2
    assert "params" not in info.paper and info.paper["tflite_kb"] == 123


@pytest.mark.parametrize("shape", [(1, 4, 2, 2), (2, 4, 16, 24), (1, 4, 10, 6)])
def test_maps_packed_raw_to_double_resolution_rgb_in_unit_interval(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = create_student("csanet", width=0.5).eval()
    with torch.no_grad():
        out = model(torch.rand(shape))
    n, _, h, w = shape
    assert out.shape == (n, 3, 2 * h, 2 * w)
    assert out.min() >= 0 and out.max() <= 1  # sigmoid head


def test_width_scales_channels_and_tiny_widths_work() -> None:
    assert create_student("csanet", width=2).channels == 32
    tiny = create_student("csanet", width=0.01, num_dams=1)
    assert tiny.channels == 1 and tiny.dams[0].channel.squeeze.out_channels == 1
    assert tiny(torch.rand(1, 4, 4, 6)).shape == (1, 3, 8, 12)


def test_bad_width_depth_and_odd_sizes_are_rejected() -> None:
    for width in (0, -1.0):
        with pytest.raises(ValueError, match="width"):
            CSANet(width=width)
    with pytest.raises(ValueError, match="DAM"):
        CSANet(num_dams=0)
    with pytest.raises(ValueError, match="even"):
        CSANet(width=0.25)(torch.rand(1, 4, 5, 6))


def test_spatial_attention_is_a_depthwise_dilated_5x5_map_in_unit_interval() -> None:
    torch.manual_seed(0)
    sa = SpatialAttention(3)
    assert sa.conv.groups == 3 and sa.conv.kernel_size == (5, 5) and sa.conv.dilation == (2, 2)
    x = torch.randn(1, 3, 17, 17) * 4
    with torch.no_grad():
        att = sa.attention(x)
        assert att.shape == x.shape and att.min() >= 0 and att.max() <= 1
        assert torch.allclose(sa(x), x * att)
        # depthwise: changing channel 0 leaves the other channels' maps alone
        y = x.clone()
        y[:, 0] += 1
        assert torch.equal(sa.attention(y)[:, 1:], att[:, 1:])
        # dilation 2: an impulse reaches offsets 2 and 4, but not 1 or 5
        impulse = torch.zeros(1, 3, 17, 17)
        impulse[:, :, 8, 8] = 10
        changed = (sa.attention(impulse) != sa.attention(torch.zeros_like(impulse)))[0, 0, 8]
    assert changed[[4, 6, 8, 10, 12]].all() and not changed[[3, 7, 9, 13]].any()


def test_channel_attention_is_a_per_channel_gate_blind_to_spatial_layout() -> None:
    torch.manual_seed(0)
    ca = ChannelAttention(8, reduction=4)
    assert ca.squeeze.out_channels == 2
    x = torch.randn(2, 8, 6, 10) * 3
    with torch.no_grad():
        att = ca.attention(x)
        assert att.shape == (2, 8, 1, 1) and att.min() >= 0 and att.max() <= 1
        assert torch.allclose(ca(x), x * att)
        shuffled = x.flatten(2)[..., torch.randperm(60)].reshape_as(x)  # same per-map means
        assert torch.allclose(ca.attention(shuffled), att, atol=1e-6)


def test_dam_is_a_residual_block_of_both_attentions() -> None:
    torch.manual_seed(0)
    dam = DoubleAttentionModule(4)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        body = dam.conv2(dam.act(dam.conv1(x)))
        expected = x + dam.fuse(torch.cat([dam.spatial(body), dam.channel(body)], dim=1))
        assert torch.allclose(dam(x), expected)
        dam.fuse.weight.zero_()
        dam.fuse.bias.zero_()
        assert torch.equal(dam(x), x)  # the skip alone


def test_feature_taps_are_every_dam_output_at_quarter_raw_resolution() -> None:
    model = create_student("csanet", width=0.25, num_dams=2)
    assert model.feature_taps == ("dams.0", "dams.1")
    seen: dict[str, tuple[int, ...]] = {}
    for path in model.feature_taps:
        model.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, path=path: seen.__setitem__(path, tuple(out.shape)))
    model(torch.rand(1, 4, 8, 12))
    assert seen == {"dams.0": (1, 4, 4, 6), "dams.1": (1, 4, 4, 6)}


def test_prune_ignore_names_the_shuffle_feeding_conv_and_the_rgb_head() -> None:
    model = create_student("csanet", width=0.25)
    convs = {name: model.get_submodule(name) for name in model.prune_ignore}
    assert convs["to_shuffle"].out_channels == 12 and convs["head"].out_channels == 3


def test_backward_gives_finite_gradients_to_every_parameter() -> None:
    torch.manual_seed(0)
    model = create_student("csanet", width=0.25, num_dams=2)
    model(torch.rand(2, 4, 6, 8)).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

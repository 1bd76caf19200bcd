"""PyNET-V2 Mobile and its NoNorm / Slim / Slim+ variants (students/pynetv2.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import students.pynetv2 as pv2
from teachers.registry import STUDENTS

NAMES = ("pynetv2_mobile", "pynetv2_mobile_nonorm", "pynetv2_mobile_slim", "pynetv2_mobile_slim_plus")
SLIM = {"pynetv2_mobile_slim", "pynetv2_mobile_slim_plus"}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny(name: str) -> pv2.PyNetV2Mobile:
    torch.manual_seed(0)
    return STUDENTS.create(name, **STUDENTS.info(name).tiny_config)


@pytest.mark.parametrize("name, expected", [
    ("pynetv2_mobile", 930_243),
    ("pynetv2_mobile_nonorm", 929_731),
    ("pynetv2_mobile_slim", 3_701_328),
    ("pynetv2_mobile_slim_plus", 3_375_568),
])
def test_default_parameter_counts(name: str, expected: int) -> None:
    assert _params(STUDENTS.create(name)) == expected


def test_full_model_is_the_released_code_less_the_moved_head_prelu_and_fits_the_paper_size() -> None:
    full = _params(STUDENTS.create("pynetv2_mobile"))
    assert full == 930_255 - 12  # released model.py, level-1 output; head PReLU on 4 maps instead of 16
    assert abs(full * 4 / 2**20 - 3.6) < 0.1  # fp32 weights in MiB vs the paper's "3.6 MB"
    nonorm = _params(STUDENTS.create("pynetv2_mobile_nonorm"))
    # affine (scale, shift) of 10 instance norms: 4 + 3 on 32-channel groups (levels 3, 2), 2 on 8 and 1 on 16 (level 1)
    assert full - nonorm == 2 * (7 * 32 + 2 * 8 + 16)


def test_slim_plus_saves_exactly_the_upsampling_convs() -> None:
    slim, plus = STUDENTS.create("pynetv2_mobile_slim"), STUDENTS.create("pynetv2_mobile_slim_plus")
    up = [_params(m.level2.up) + _params(m.level1.up) for m in (slim, plus)]
    assert up[0] == (256 * 128 * 9 + 128 + 128) + (128 * 64 * 9 + 64 + 64)
    assert up[1] == (256 * 128 + 128 + 128 * 9 + 128 + 128) + (128 * 64 + 64 + 64 * 9 + 64 + 64)
    assert _params(slim) - _params(plus) == up[0] - up[1]


@pytest.mark.parametrize("width, slim, expected", [
    (1.0, False, 32), (1.0, True, 64), (0.75, False, 24), (0.5, False, 16), (0.3, False, 8), (0.05, False, 8),
    (0.125, True, 8),
])
def test_width_rounds_level1_channels_to_a_multiple_of_four_at_least_eight(width: float, slim: bool,
                                                                           expected: int) -> None:
    assert pv2.level1_channels(width, slim) == expected


@pytest.mark.parametrize("name", NAMES)
def test_shapes_at_several_sizes_including_non_square(name: str) -> None:
    model = _tiny(name).eval()
    sizes = [(56, 64), (72, 56), (56, 56)] if name in SLIM else [(28, 28), (28, 44), (36, 32)]
    for h, w in sizes:
        with torch.no_grad():
            out = model(torch.rand(2, 4, h, w))
        assert out.shape == (2, 3, 2 * h, 2 * w)


@pytest.mark.parametrize("name", NAMES)
def test_feature_taps_are_the_three_levels_coarse_to_fine(name: str) -> None:
    model = _tiny(name).eval()
    c1, c2, c3 = model.channels
    assert (c2, c3) == (2 * c1, 4 * c1)
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda _m, _i, out, p=p: seen.__setitem__(p, tuple(out.shape))) for p in model.feature_taps]
    h, w = (56, 64) if name in SLIM else (28, 36)
    with torch.no_grad():
        model(torch.rand(1, 4, h, w))
    for hook in hooks:
        hook.remove()
    s = 2 if name in SLIM else 1  # Slim's stride-2 first conv halves every level
    assert seen == {"level3": (1, c3, h // (4 * s), w // (4 * s)), "level2": (1, c2, h // (2 * s), w // (2 * s)),
                    "level1": (1, c1, h // s, w // s)}


def test_slim_downsamples_in_its_first_conv() -> None:
    assert STUDENTS.create("pynetv2_mobile_slim").conv_l1_d1.conv.stride == (2, 2)
    assert STUDENTS.create("pynetv2_mobile").conv_l1_d1.conv.stride == (1, 1)


@pytest.mark.parametrize("name, bad", [
    ("pynetv2_mobile", (30, 28)),  # not a multiple of 4
    ("pynetv2_mobile", (24, 32)),  # level 3 would be 6x8 < 7
    ("pynetv2_mobile_slim", (60, 64)),  # not a multiple of 8
    ("pynetv2_mobile_slim_plus", (48, 56)),  # level 3 would be 6x7 < 7
])
def test_unsupported_input_sizes_are_rejected_with_a_fix(name: str, bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="Crop or pad"):
        _tiny(name)(torch.rand(1, 4, *bad))


def test_bad_configs_are_rejected() -> None:
    for width in (0, -1.0):
        with pytest.raises(ValueError, match="width"):
            STUDENTS.create("pynetv2_mobile", width=width)
    with pytest.raises(ValueError, match="variant"):
        pv2.PyNetV2Mobile("tiny")
    with pytest.raises(ValueError, match="output_scale"):
        STUDENTS.create("pynetv2_mobile", output_scale=0.0)
    with pytest.raises(ValueError, match="padding_mode"):
        STUDENTS.create("pynetv2_mobile", padding_mode="circular")
    with pytest.raises(TypeError, match="pynetv2_mobile_slim"):
        STUDENTS.create("pynetv2_mobile_slim", variant="full")


def _norm_paths(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.InstanceNorm2d)}


@pytest.mark.parametrize("name", NAMES)
def test_instance_norm_sits_on_every_second_group_only(name: str) -> None:
    model = STUDENTS.create(name, width=0.25)
    if name == "pynetv2_mobile_nonorm":
        assert not _norm_paths(model)
        return
    expected = {f"{block}.branches.{g}.{layer}.norm" for block, groups, depth in [
        ("level3.groups", (0, 2), 2), ("level2.groups", (0,), 3), ("level1.groups4", (0, 2), 1),
        ("level1.groups2", (0,), 1)] for g in groups for layer in range(depth)}
    assert _norm_paths(model) == expected
    for norm in (model.get_submodule(p) for p in expected):
        assert norm.affine and norm.eps == pv2.IN_EPS


def test_grouped_block_parts_stay_separate_until_the_1x1_fuse() -> None:
    torch.manual_seed(0)
    block = pv2.GroupedResidualBlock(8, groups=4, depth=2, instance_norm=True, padding_mode="reflect").eval()
    assert [len(b) for b in block.branches] == [2, 2, 2, 2] and block.branches[1][0].conv.in_channels == 2
    with torch.no_grad():
        block.fuse.conv.weight.copy_(torch.eye(8)[:, :, None, None])  # identity fuse exposes the parts
        block.fuse.conv.bias.zero_()
        x = torch.rand(1, 8, 9, 9)
        y = x.clone()
        y[:, 2:4] += torch.rand(1, 2, 9, 9)  # change group 1 only
        out_x, out_y = block(x), block(y)
    changed = (out_x - out_y).abs().amax(dim=(0, 2, 3)) > 0
    assert changed.tolist() == [False, False, True, True, False, False, False, False]


def test_cam_gates_whole_channels_with_a_global_descriptor() -> None:
    torch.manual_seed(0)
    cam = pv2.ChannelAttention(8, "reflect").eval()
    x = torch.rand(2, 8, 21, 15)
    with torch.no_grad():
        conv = cam.conv(x)
        gate = cam.gate(conv)
        out = cam(x)
        assert cam.reduce2(cam.reduce1(conv)).shape[-2:] == (2, 1)  # /9 per side: 21 -> 7 -> 2, 15 -> 5 -> 1
        assert gate.shape == (2, 8, 1, 1) and ((gate > 0) & (gate < 1)).all()
        torch.testing.assert_close(out, conv * gate)
        cam.fc2.conv.bias.fill_(30.0)  # gate open: the block is its 3x3 conv + PReLU
        torch.testing.assert_close(cam(x), conv)
        cam.fc2.conv.bias.fill_(-30.0)  # gate closed
        assert cam(x).abs().max() < 1e-9


def test_sam_gates_each_pixel_from_a_depthwise_5x5_of_its_own_channel() -> None:
    torch.manual_seed(0)
    sam = pv2.SpatialAttention(6, "reflect").eval()
    assert sam.gate.conv.groups == 6 and sam.gate.conv.kernel_size == (5, 5)
    x = torch.rand(1, 6, 12, 10)
    with torch.no_grad():
        conv = sam.conv(x)
        gate = torch.sigmoid(sam.gate(conv))
        assert gate.shape == conv.shape and not torch.allclose(gate, gate[..., :1, :1].expand_as(gate))
        torch.testing.assert_close(sam(x), conv * gate)
        sam.gate.conv.weight.zero_()
        sam.gate.conv.bias.fill_(0.0)  # uniform gate of sigmoid(0) = 0.5
        torch.testing.assert_close(sam(x), 0.5 * conv)
    # a pixel's gate sees a 5x5 neighbourhood of its own channel only
    probe = conv.clone().requires_grad_(True)
    sam2 = pv2.SpatialAttention(6, "reflect")
    sam2.gate(probe)[0, 2, 6, 5].backward()
    nz = probe.grad[0].nonzero()
    assert set(nz[:, 0].tolist()) == {2}
    assert nz[:, 1].min() >= 4 and nz[:, 1].max() <= 8 and nz[:, 2].min() >= 3 and nz[:, 2].max() <= 7


def test_slim_plus_pointwise_before_resize_equals_pointwise_after() -> None:
    torch.manual_seed(0)
    up = pv2.Upsample(16, 8, depthwise=True, padding_mode="reflect").eval()
    x = torch.rand(1, 16, 7, 9)
    with torch.no_grad():
        before = F.interpolate(up.reduce(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        after = up.reduce(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
    torch.testing.assert_close(before, after)
    assert up.conv.conv.groups == 8


@pytest.mark.parametrize("name", NAMES)
def test_output_range_follows_output_scale(name: str) -> None:
    model = _tiny(name).eval()
    h, w = (56, 64) if name in SLIM else (28, 32)
    with torch.no_grad():
        model.head.rgb.conv.bias.fill_(50.0)  # saturate tanh
        high = model(100 * torch.rand(1, 4, h, w))
        assert high.max() <= 1.0 and high.min() > 0.999
        model.head.output_scale = 0.58  # the released code's mapping reaches past [0, 1]
        assert torch.allclose(model(torch.rand(1, 4, h, w)), torch.full((1, 3, 2 * h, 2 * w), 1.08))
        model.head.rgb.conv.bias.fill_(-50.0)
        assert torch.allclose(model(torch.rand(1, 4, h, w)), torch.full((1, 3, 2 * h, 2 * w), -0.08))


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = _tiny(name).train()
    h, w = (56, 64) if name in SLIM else (28, 32)
    model(torch.rand(2, 4, h, w)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_prune_ignore_names_the_convs_feeding_pixel_shuffles() -> None:
    for name in ("pynetv2_mobile", "pynetv2_mobile_slim"):
        model = STUDENTS.create(name, width=0.25)
        convs = [model.get_submodule(p) for p in model.prune_ignore]
        assert [c.out_channels for c in convs] == [16, 12 if name in SLIM else 3]


def test_zero_padding_option_keeps_shapes_and_parameters() -> None:
    a = STUDENTS.create("pynetv2_mobile", width=0.25)
    b = STUDENTS.create("pynetv2_mobile", width=0.25, padding_mode="zeros")
    assert _params(a) == _params(b)
    assert b.eval()(torch.rand(1, 4, 28, 32)).shape == (1, 3, 56, 64)


def _level_order(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_module_order_puts_each_levels_grouped_blocks_before_its_other_writers() -> None:
    convs = _level_order(STUDENTS.create("pynetv2_mobile", width=0.25))
    assert convs[0] == "conv_l1_d1.conv"  # the input conv stays first
    first = {name: next(i for i, c in enumerate(convs) if c.startswith(name)) for name in (
        "level3.groups.", "conv_l3_d1.", "level3.sam.", "level3.cam.", "level2.groups.", "level2.up.",
        "level2.skip.", "level1.groups4.", "level1.groups2.", "level1.up.", "level1.skip.")}
    assert first["level3.groups."] < min(first[k] for k in ("conv_l3_d1.", "level3.sam.", "level3.cam."))
    assert first["level2.groups."] < min(first["level2.up."], first["level2.skip."])
    assert first["level1.groups4."] < min(first[k] for k in ("level1.groups2.", "level1.up.", "level1.skip."))


@pytest.mark.parametrize("channel, part", [(0, 0), (20, 1), (47, 2), (63, 3)])
def test_pruning_a_level3_channel_shrinks_the_part_holding_it(channel: int, part: int) -> None:
    import torch_pruning as tp

    from compress.pruning.rules import dependency_graph

    model = STUDENTS.create("pynetv2_mobile", width=0.5)  # level 3: 64 channels, parts of 16
    graph = dependency_graph(model, torch.zeros(1, 4, 28, 28))
    graph.get_pruning_group(model.conv_l3_d1.conv, tp.prune_conv_out_channels, idxs=[channel]).prune()
    expected = [16] * 4
    expected[part] = 15
    assert model.level3.groups.split_sizes == expected
    assert model(torch.rand(1, 4, 28, 32)).shape == (1, 3, 56, 64)


@pytest.mark.parametrize("name", ["pynetv2_mobile", "pynetv2_mobile_slim_plus"])
def test_pruning_a_silent_channel_keeps_the_output(name: str) -> None:
    """Zero everything writing one channel of each level, prune those channels: the output must not move."""
    import torch_pruning as tp

    from compress.pruning.rules import dependency_graph

    torch.manual_seed(0)
    model = STUDENTS.create(name, width=0.25).eval()
    side = model.min_input
    x = torch.rand(1, 4, side, side)
    for writer, channel in ((model.conv_l3_d1.conv, 5), (model.level2.skip.conv, 9), (model.level1.skip.conv, 3)):
        graph = dependency_graph(model, x)  # traces with autograd: outside no_grad
        group = graph.get_pruning_group(writer, tp.prune_conv_out_channels, idxs=[channel])
        with torch.no_grad():
            for dep, idxs in group:
                layer = dep.target.module
                if isinstance(layer, nn.Conv2d) and dep.handler.__name__ == "prune_out_channels":  # depthwise too
                    layer.weight[idxs] = 0
                    layer.bias[idxs] = 0
                elif isinstance(layer, nn.InstanceNorm2d):
                    layer.bias[idxs] = 0  # a zero input normalises to the shift
            before = model(x)
            group.prune()
            torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)
    assert model.channels[0] * 4 - 1 == sum(model.level3.groups.split_sizes)


def test_channel_plan_of_a_pruned_model_rebuilds() -> None:
    """Unequal group parts after pruning: ``apply_channel_plan`` (a fresh graph per trim) rebuilds them."""
    from compress.checkpoint import apply_channel_plan, channel_plan
    from compress.pruning.prune import PruneTarget, prune_model

    torch.manual_seed(0)
    pruned = STUDENTS.create("pynetv2_mobile", width=0.5)
    x = torch.rand(1, 4, 28, 32)
    prune_model(pruned, x, PruneTarget(ratio=0.3))
    parts = [b.split_sizes for b in pruned.modules() if isinstance(b, pv2.GroupedResidualBlock)]
    assert any(len(set(p)) > 1 for p in parts)  # unequal parts: the case a reused graph gets wrong
    plan = channel_plan(pruned)
    rebuilt = apply_channel_plan(STUDENTS.create("pynetv2_mobile", width=0.5), plan)
    assert channel_plan(rebuilt) == plan
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), pruned.eval()(x))


def test_an_exported_graph_keeps_its_input_size_free() -> None:
    """QAT exports the model (torch.export, sizes AUTO) at the calibration size and trains it on smaller patches:
    the input check must not pin the traced graph to the example's H and W."""
    model = _tiny("pynetv2_mobile").eval()
    dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    exported = torch.export.export(model, (torch.rand(1, 4, 32, 64),), dynamic_shapes=(dims,), strict=False)
    x = torch.rand(1, 4, 32, 128)  # another width (QAT: 64x64 patches after 64x128 calibration frames)
    assert torch.allclose(exported.module()(x), model(x), atol=1e-5)

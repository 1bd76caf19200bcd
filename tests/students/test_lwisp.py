import pytest
import torch
from torch import nn

import students.lwisp  # noqa: F401  (registers lwisp, lwisp_nofgam)
from students import STUDENTS, create_student
from students.lwisp import CCB, FGAM, LWISP, ContrastMap


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny(name: str = "lwisp") -> LWISP:
    torch.manual_seed(0)
    return create_student(name, **STUDENTS.info(name).tiny_config)


def _backbone_convs(model: LWISP) -> int:
    """Convs outside the attention, contrast and global-vector branches: the paper's "24 layers"."""
    side = ("fgam", "contrast", "global_fc")
    return sum(isinstance(m, nn.Conv2d) and not any(s in n for s in side) for n, m in model.named_modules())


def test_default_parameter_counts_and_the_24_layer_backbone() -> None:
    with_fgam, without = create_student("lwisp"), create_student("lwisp_nofgam")
    assert with_fgam.use_fgam and not without.use_fgam
    assert _params(with_fgam) == 2_063_177  # paper (Table 3): 2,014,681
    assert _params(without) == 1_665_587  # paper: 1,660,777
    # The gap: the convs after the four FGAMs read 2C channels (9 * 43,520 weights) + the attention.
    attention = sum(_params(getattr(with_fgam, f"fgam{i}")) for i in range(1, 5))
    assert attention == 5_910
    assert _params(with_fgam) - _params(without) == 9 * (16 * 32 + 32 * 64 + 64 * 128 + 128 * 256) + attention
    assert _backbone_convs(with_fgam) == _backbone_convs(without) == 24
    assert STUDENTS.info("lwisp").paper["params"] == 2_014_681
    assert STUDENTS.info("lwisp_nofgam").paper["params"] == 1_660_777


def test_width_scales_every_level() -> None:
    model = _tiny()
    assert _params(model) == 129_779
    widths = [model.down1[0][0].out_channels, model.down4[0][0].out_channels, model.bottleneck[0].out_channels]
    assert widths == [4, 32, 64]
    assert _params(LWISP(width=0.05)) > 0  # tiny widths clamp to one channel, still a working net
    with torch.no_grad():
        assert LWISP(width=0.05)(torch.rand(1, 4, 16, 16)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("name", ["lwisp", "lwisp_nofgam"])
@pytest.mark.parametrize("h, w", [(16, 16), (16, 48), (48, 32), (64, 80)])
def test_packed_raw_to_double_resolution_rgb_in_unit_range(name: str, h: int, w: int) -> None:
    with torch.no_grad():
        out = _tiny(name).eval()(torch.rand(2, 4, h, w))
    assert out.shape == (2, 3, 2 * h, 2 * w)
    assert out.min() > 0 and out.max() < 1  # sigmoid output


def test_fgam_adds_each_attention_map_to_the_input_and_concatenates() -> None:
    torch.manual_seed(0)
    fgam, x = FGAM(16), torch.randn(2, 16, 8, 12)
    with torch.no_grad():
        out = fgam(x)
        channel_map, spatial_map = fgam.channel(x), fgam.spatial(x)
    assert out.shape == (2, 32, 8, 12)
    assert channel_map.shape == (2, 16, 1, 1) and spatial_map.shape == (2, 1, 8, 12)
    torch.testing.assert_close(out[:, :16] - x, channel_map.expand_as(x))  # one value per channel
    torch.testing.assert_close(out[:, 16:] - x, spatial_map.expand_as(x))  # one value per pixel
    assert 0 < channel_map.min() and channel_map.max() < 1 and 0 < spatial_map.min() and spatial_map.max() < 1
    with torch.no_grad():  # added, not multiplied: a zero feature is lifted by the maps, not kept at zero
        assert fgam(torch.zeros(1, 16, 4, 4)).min() > 0
    # The spatial map sees only the channel mean and max: permuting channels leaves it unchanged.
    with torch.no_grad():
        torch.testing.assert_close(fgam.spatial(x.flip(1)), spatial_map)


def test_contrast_map_is_sigmoid_of_local_minus_dilated_context() -> None:
    cmap = ContrastMap(3)
    assert cmap.local.kernel_size == (1, 1) and cmap.local.dilation == (1, 1)
    assert cmap.context.kernel_size == (3, 3) and cmap.context.dilation == (2, 2)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(cmap(x), torch.sigmoid(cmap.local(x) - cmap.context(x)))
        # Dilation 2: an impulse reaches the context branch 2 pixels away, never 1.
        nn.init.ones_(cmap.context.weight), nn.init.zeros_(cmap.context.bias)
        impulse = torch.zeros(1, 3, 9, 9)
        impulse[..., 4, 4] = 1.0
        reach = cmap.context(impulse)[0, 0]
    assert reach[4, 6] == reach[6, 6] == reach[2, 4] == 3.0
    assert reach[4, 5] == reach[5, 5] == reach[3, 4] == 0.0


def test_ccb_sums_one_shared_subpixel_conv_over_both_stages_and_concats_the_contrast_map() -> None:
    torch.manual_seed(0)
    ccb = CCB(8, 4, skip_channels=4)
    x, stage1, skip = torch.randn(1, 8, 5, 6), torch.randn(1, 8, 5, 6), torch.randn(1, 4, 10, 12)
    with torch.no_grad():
        out = ccb(x, stage1, skip)
        expected = ccb.fuse(torch.cat([ccb.core(x) + ccb.core(stage1), ccb.contrast(skip)], dim=1))
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(ccb(stage1, x, skip), out)  # one P for both stages (Eq. 1)
    assert out.shape == (1, 4, 10, 12)
    assert ccb.fuse[0].in_channels == 4 + 4  # O_FAU ++ C_l
    with pytest.raises(ValueError, match="skip"):
        ccb(x, stage1)
    last = CCB(4, 4)  # up4: no encoder feature at 2H, core only
    assert last.contrast is None and last.fuse is None
    with torch.no_grad():
        torch.testing.assert_close(last(x[:, :4], stage1[:, :4]), last.core(x[:, :4]) + last.core(stage1[:, :4]))


def test_up_block_taps_fire_coarse_to_fine() -> None:
    model = _tiny().eval()
    assert model.feature_taps == ("up1", "up2", "up3", "up4")
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda _m, _i, out, p=p: seen.__setitem__(p, tuple(out.shape))) for p in model.feature_taps]
    with torch.no_grad():
        model(torch.rand(1, 4, 32, 48))
    for hook in hooks:
        hook.remove()
    assert seen == {"up1": (1, 16, 8, 12), "up2": (1, 8, 16, 24), "up3": (1, 4, 32, 48), "up4": (1, 4, 64, 96)}
    for path in model.prune_ignore:
        assert isinstance(model.get_submodule(path), nn.Conv2d)
    assert model.get_submodule("tail").out_channels == 3


def test_scale_1_is_the_teacher_body_without_up4() -> None:
    body = LWISP(width=0.25, in_channels=3, scale=1)
    assert body.up4 is None and body.feature_taps == ("up1", "up2", "up3")
    assert not any(p.startswith("up4") for p in body.prune_ignore)
    with torch.no_grad():
        assert body(torch.rand(1, 3, 32, 16)).shape == (1, 3, 32, 16)


@pytest.mark.parametrize("name", ["lwisp", "lwisp_nofgam"])
def test_backward_reaches_every_parameter(name: str) -> None:
    model = _tiny(name).train()
    model(torch.rand(2, 4, 32, 16)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_sizes_and_configs_raise_clear_errors() -> None:
    model = _tiny().eval()
    for shape in [(1, 4, 24, 32), (1, 4, 32, 40), (1, 4, 8, 16), (1, 4, 0, 16)]:
        with pytest.raises(ValueError, match="multiples of 16"):
            model(torch.rand(shape))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="width must be > 0"):
        create_student("lwisp", width=0)
    with pytest.raises(ValueError, match="scale"):
        LWISP(scale=4)
    assert STUDENTS.info("lwisp").input_multiple == STUDENTS.info("lwisp").min_input == 16

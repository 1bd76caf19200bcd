"""PyNET teacher: the published size, per-level shapes, sigmoid range, input checks, pruning."""
import pytest
import torch

from teachers import create_teacher, list_teachers
from teachers.pynet import PyNET

TINY = 0.125  # level widths 4 / 8 / 16 / 32 / 64, level 0: 4


def _param_count(**config: object) -> int:
    with torch.device("meta"):  # 47.5 M parameters without allocating them
        model = create_teacher("pynet", **config)
    return sum(p.numel() for p in model.parameters())


def test_full_width_matches_published_parameter_count() -> None:
    assert "pynet" in list_teachers()
    assert _param_count() == 47_554_738  # LW-ISP Table 3
    # the figure needs the released model's instance norm in the middle of level 1 (1,536 channels)
    assert _param_count(instance_norm_level_1=False) == 47_554_738 - 2 * 1_536


@pytest.fixture(scope="module")
def tiny() -> PyNET:
    torch.manual_seed(0)
    return create_teacher("pynet", width=TINY).eval()


def test_every_level_shape_range_and_feature_tap(tiny: PyNET) -> None:
    x = torch.rand(1, 4, 64, 64)
    taps: dict[int, tuple[int, ...]] = {}
    hooks = [tiny.feature_module(level).register_forward_hook(
        lambda _m, _i, out, level=level: taps.__setitem__(level, tuple(out.shape))) for level in range(6)]
    try:
        with torch.no_grad():
            outputs = tiny.forward_levels(x, up_to_level=0)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(outputs) == [0, 1, 2, 3, 4, 5]
    for level, out in outputs.items():
        side = 128 // 2**level  # level k: 2H / 2^k
        assert out.shape == (1, 3, side, side)
        assert out.min() >= 0.0 and out.max() <= 1.0  # sigmoid
        assert taps[level] == (1, tiny.channels[level], side, side)  # the feature its RGB head reads
    with torch.no_grad():
        torch.testing.assert_close(tiny(x), outputs[0])  # default: the level attribute, 0
        coarse = tiny.forward_levels(x, up_to_level=3)
    assert sorted(coarse) == [3, 4, 5]  # finer levels are not computed
    torch.testing.assert_close(coarse[3], outputs[3])


def test_rgb_heads_are_the_prune_ignored_convs(tiny: PyNET) -> None:
    modules = dict(tiny.named_modules())
    assert len(tiny.prune_ignore) == 6
    for name in tiny.prune_ignore:
        assert isinstance(modules[name], torch.nn.Conv2d) and modules[name].out_channels == 3


def test_instance_norm_placement(tiny: PyNET) -> None:
    def normed(block: str) -> bool:
        return any(isinstance(m, torch.nn.InstanceNorm2d) for m in tiny.get_submodule(block).modules())

    assert not normed("conv_l1_d1") and not normed("conv_l1_d3") and not normed("conv_l1_d14")
    assert all(normed(f"conv_l1_d{d}") for d in (5, 6, 7, 8, 9, 10, 12))
    assert all(normed(b) for b in ("conv_l2_d1", "conv_l3_d8", "conv_l4_d3", "conv_l5_d4"))


@pytest.mark.parametrize("shape", [(1, 4, 64, 40), (1, 4, 16, 16), (1, 4, 72, 64)])
def test_rejects_sizes_the_pyramid_cannot_take(tiny: PyNET, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny(torch.rand(shape))


def test_rejects_bad_level_and_width() -> None:
    with pytest.raises(ValueError, match="level"):
        create_teacher("pynet", width=TINY, level=6)
    with pytest.raises(ValueError, match="width"):
        create_teacher("pynet", width=0.0)


def test_channel_pruning_keeps_the_forward_consistent() -> None:
    """Only the requested level's head runs, so torch-pruning's traced graph is the computed one."""
    from compress.pruning.prune import PruneTarget, prune_model

    model = create_teacher("pynet", width=TINY)
    prune_model(model, torch.rand(1, 4, 32, 32), PruneTarget(ratio=0.25))
    with torch.no_grad():
        assert model(torch.rand(1, 4, 32, 32)).shape == (1, 3, 64, 64)

"""Feature taps by module path and the adapters that match a student feature to its teacher's shape."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.adapters import AdapterError, FeatureAdapter, FeaturePair, auto_pairs, build_adapters
from distill.taps import FeatureTaps, TapError, tap_paths
from students import create_student
from teachers import create_teacher


def _nested() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), nn.Conv2d(4, 2, 1))


def test_taps_on_nested_modules_are_the_module_outputs_with_their_graph() -> None:
    model, x = _nested(), torch.rand(2, 3, 8, 8)
    taps = FeatureTaps(model, ["0.1", "1"])
    with taps:
        out = model(x)
    feats = taps.collect()
    assert torch.equal(feats["0.1"], torch.relu(model[0][0](x)))
    assert torch.equal(feats["1"], out)
    feats["0.1"].sum().backward()  # the tap keeps its autograd graph: feature losses reach the weights
    assert model[0][0].weight.grad is not None and model[1].weight.grad is None


def test_hooks_are_removed_after_the_context() -> None:
    model = _nested()
    with FeatureTaps(model, ["0.0"]):
        assert model[0][0]._forward_hooks
    assert not model[0][0]._forward_hooks


def test_unknown_path_names_the_closest_module_and_the_declared_taps() -> None:
    with pytest.raises(TapError, match=r"no submodule 'up5'.*did you mean 'up4'.*feature_taps: up1, up2, up3, up4"):
        FeatureTaps(create_student("lwisp", width=0.25), ["up5"], owner="student")


def test_a_module_run_twice_in_one_forward_is_ambiguous() -> None:
    conv = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(conv, conv)
    with pytest.raises(TapError, match="more than once"), FeatureTaps(model, ["0"]):
        model(torch.rand(1, 3, 4, 4))


def test_pynet_level_taps_are_listed_coarse_to_fine() -> None:
    paths = tap_paths(create_teacher("pynet", width=0.0625))
    assert paths[0] == "conv_l5_d4" and paths[-1] == "conv_t0" and len(paths) == 6


def test_adapter_is_identity_for_equal_shapes_and_a_1x1_conv_plus_resize_otherwise() -> None:
    same = FeatureAdapter(8, 8)
    x = torch.rand(2, 8, 16, 16)
    assert same.is_identity and torch.equal(same(x, (16, 16)), x)
    grow = FeatureAdapter(8, 16)
    assert not grow.is_identity and tuple(grow(x, (32, 32)).shape) == (2, 16, 32, 32)
    assert tuple(grow(x, (8, 8)).shape) == (2, 16, 8, 8)
    # 1x1 conv and bilinear resize commute, so running the conv at the smaller size changes nothing
    up = nn.functional.interpolate(grow.proj(x), size=(32, 32), mode="bilinear", align_corners=False)
    conv_after = grow.proj(nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))
    assert torch.allclose(up, conv_after, atol=1e-5)


def test_shape_check_lists_both_paths_and_shapes() -> None:
    pair = FeaturePair("up2", "up1")
    with pytest.raises(AdapterError,
                       match=r"student 'up2' \(1, 8, 32, 64\) vs teacher 'up1' \(1, 16, 32, 32\).*aspect"):
        build_adapters([pair], {"up2": torch.zeros(1, 8, 32, 64)}, {"up1": torch.zeros(1, 16, 32, 32)})
    with pytest.raises(AdapterError, match=r"\(1, 8\) vs teacher 'up1'.*\(N, C, H, W\)"):
        build_adapters([pair], {"up2": torch.zeros(1, 8)}, {"up1": torch.zeros(1, 16, 32, 32)})


def _feats(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    taps = FeatureTaps(model, tap_paths(model))
    with torch.no_grad(), taps:
        model(x)
    return taps.collect()


def test_auto_pairs_by_name_for_aaunet_and_by_size_for_lwisp_clean() -> None:
    raw, rgb = torch.rand(1, 4, 32, 32), torch.rand(1, 3, 64, 64)
    teacher = _feats(create_teacher("aaunet", base_width=4), raw)
    student = _feats(create_student("aaunet_student", base_width=4), raw)
    assert [(p.student, p.teacher) for p in auto_pairs(student, teacher, "l1")] == [
        (n, n) for n in ("attention", "dec4", "dec3", "dec2", "dec1")]

    teacher = _feats(create_teacher("lwisp_clean", width=0.25), rgb)  # sees the clean RGB J
    student = _feats(create_student("lwisp", width=0.25), raw)
    pairs = auto_pairs(student, teacher, last=3)
    assert [(p.student, p.teacher) for p in pairs] == [("up2", "up1"), ("up3", "up2"), ("up4", "up3")]
    adapters = build_adapters(pairs, student, teacher)
    assert [adapters[p.key].is_identity for p in pairs] == [False, False, True]  # LW-ISP widths: 8/16, 4/8, 4/4


def test_auto_pairs_without_a_match_says_how_to_pair_by_hand() -> None:
    with pytest.raises(AdapterError, match="distill.features.pairs"):
        auto_pairs({"a": torch.zeros(1, 2, 8, 8)}, {"b": torch.zeros(1, 2, 4, 4)})

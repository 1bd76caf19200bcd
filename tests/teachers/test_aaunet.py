"""AA-UNet teacher: PUNET compatibility, attention, level outputs and feature taps, multi-level loss, pruning."""
import pytest
import torch

from teachers import create_teacher
from teachers.aaunet import (
    AAUNET_LOSS_WEIGHTS,
    FEATURE_MODULES,
    AAUNet,
    SelfAttention2d,
    aaunet_multilevel_loss,
    downsample_target,
)
from teachers.punet import PUNET

WIDTH = 4


@pytest.fixture(scope="module")
def tiny() -> AAUNet:
    torch.manual_seed(0)
    model = create_teacher("aaunet", base_width=WIDTH)
    with torch.no_grad():  # switch the attention on so the tests see it
        model.attention.gamma.fill_(0.5)
    return model.eval()


def test_fresh_aaunet_equals_punet_with_the_same_weights() -> None:
    """gamma starts at 0, and a PUNET state_dict loads into AA-UNet: the teacher starts as the baseline."""
    torch.manual_seed(1)
    punet = PUNET(base_width=WIDTH).eval()
    model = AAUNet(base_width=WIDTH).eval()
    missing, unexpected = model.load_state_dict(punet.state_dict(), strict=False)
    assert not unexpected
    assert all(k.startswith(("attention.", "head1", "head2", "head3", "head4")) for k in missing)
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), punet(x))


def test_self_attention_mixes_positions_and_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    block = SelfAttention2d(16, reduction=4).eval()
    x = torch.rand(1, 16, 4, 4)
    with torch.no_grad():
        assert torch.equal(block(x), x)  # gamma = 0: identity
        block.gamma.fill_(1.0)
        y = block(x)
        x2 = x.clone()
        x2[..., 0, 0] += 1.0  # one position changes -> every position's output changes
        y2 = block(x2)
    assert (y2 - y)[..., 3, 3].abs().max() > 0
    with pytest.raises(ValueError, match="reduction"):
        SelfAttention2d(8, reduction=0)


def test_level_outputs_features_and_taps(tiny: AAUNet) -> None:
    x = torch.rand(1, 4, 64, 64)
    taps: dict[str, tuple[int, ...]] = {}
    hooks = [tiny.get_submodule(path).register_forward_hook(
        lambda _m, _i, out, path=path: taps.__setitem__(path, tuple(out.shape))) for path in FEATURE_MODULES]
    try:
        with torch.no_grad():
            levels = tiny.forward_levels(x)
            features = tiny.level_features(x)
            final = tiny(x)
    finally:
        for h in hooks:
            h.remove()
    assert {k: tuple(v.shape) for k, v in levels.items()} == {
        0: (1, 3, 128, 128), 1: (1, 3, 64, 64), 2: (1, 3, 32, 32), 3: (1, 3, 16, 16), 4: (1, 3, 8, 8)}
    torch.testing.assert_close(levels[0], final)
    for out in levels.values():
        assert -0.08 - 1e-6 <= out.min() and out.max() <= 1.08 + 1e-6
    w = WIDTH
    expected = {"attention": (1, 16 * w, 4, 4), "dec4": (1, 8 * w, 8, 8), "dec3": (1, 4 * w, 16, 16),
                "dec2": (1, 2 * w, 32, 32), "dec1": (1, w, 64, 64)}
    assert {k: tuple(v.shape) for k, v in features.items()} == expected
    assert taps == expected  # the same tensors are reachable by module path with forward hooks


def test_forward_backward_reaches_every_parameter(tiny: AAUNet) -> None:
    model = create_teacher("aaunet", base_width=WIDTH).train()
    x, target = torch.rand(2, 4, 32, 32), torch.rand(2, 3, 64, 64)
    loss, parts = aaunet_multilevel_loss(model.forward_levels(x), target)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    assert model.attention.gamma.grad is not None and model.attention.gamma.grad.abs() > 0
    # 32x32 packed input: level 3 is 8x8 and level 4 4x4, smaller than the 11x11 SSIM window
    assert set(parts) == set(AAUNET_LOSS_WEIGHTS) - {"l3_ssim"}


def test_multilevel_loss_matches_hand_computation() -> None:
    target = torch.rand(1, 3, 64, 64)
    outputs = {1: torch.rand(1, 3, 32, 32), 2: torch.rand(1, 3, 16, 16)}
    total, parts = aaunet_multilevel_loss(outputs, target, {"l1_mse": 2.0, "l2_mse": 0.5, "l1_ssim": 0.0})
    ref1 = torch.nn.functional.avg_pool2d(target, 2)
    ref2 = torch.nn.functional.avg_pool2d(target, 4)
    mse1 = ((outputs[1] - ref1) ** 2).mean()
    mse2 = ((outputs[2] - ref2) ** 2).mean()
    assert set(parts) == {"l1_mse", "l2_mse"}  # weight 0 is not computed
    assert parts["l1_mse"] == pytest.approx(float(mse1), rel=1e-5)
    assert float(total) == pytest.approx(float(2.0 * mse1 + 0.5 * mse2), rel=1e-5)
    # a perfect prediction has zero loss on every term
    perfect = {1: downsample_target(target, (32, 32))}
    zero, _ = aaunet_multilevel_loss(perfect, target, {"l1_mse": 1.0, "l1_ssim": 1.0})
    assert float(zero) == pytest.approx(0.0, abs=1e-5)


def test_multilevel_loss_errors_name_the_term() -> None:
    with pytest.raises(KeyError, match="l9_edge"):
        aaunet_multilevel_loss({1: torch.rand(1, 3, 8, 8)}, torch.rand(1, 3, 16, 16), {"l9_edge": 1.0})
    with pytest.raises(KeyError, match="needs level 3"):
        aaunet_multilevel_loss({1: torch.rand(1, 3, 8, 8)}, torch.rand(1, 3, 16, 16), {"l3_mse": 1.0})


def test_pruning_treats_attention_as_one_unit_and_rebuilds_from_the_plan() -> None:
    from compress.checkpoint import apply_channel_plan
    from compress.pruning.prune import PruneTarget, prune_model

    torch.manual_seed(0)
    model = create_teacher("aaunet", base_width=8)
    with torch.no_grad():
        model.attention.gamma.fill_(0.5)
    plan = prune_model(model, torch.rand(1, 4, 32, 32), PruneTarget(ratio=0.25))
    bottleneck = plan["bottleneck4.1.0"]
    assert model.attention.coupled_channels == bottleneck < 16 * 8  # pruned with the bottleneck it wraps
    assert model.attention.query.in_channels == model.attention.value.in_channels == bottleneck
    assert model.attention.query.out_channels == model.attention.key.out_channels == 16  # inner width kept
    x = torch.rand(1, 4, 32, 32)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    rebuilt = apply_channel_plan(create_teacher("aaunet", base_width=8), plan)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), expected)

"""Weight-side PTQ survives TFLite's per-channel weight quantizer: bias correction cancels the mean shift of
weight rounding, AdaRound's snapped weights quantize back to exactly the chosen q with the same scale."""
import copy

import pytest
import torch
from torch import nn

from compress.quantization.weight_rounding import (
    _grouped_matmul,
    adaround,
    adaround_layer,
    bias_correct,
    sample_columns,
    snap_to_grid,
    tflite_weight_quant,
)


def _tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.PReLU(8),  # depthwise
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.LeakyReLU(0.2),  # grouped
        nn.Conv2d(8, 12, 1), nn.PixelShuffle(2),
    )
    # a per-channel weight offset makes rounding errors correlate within a channel (as in trained nets)
    for m in net:
        if isinstance(m, nn.Conv2d):
            m.weight.data += 0.3 * m.weight.data.abs().mean() * torch.randn(m.weight.shape[0], 1, 1, 1)
    return net.eval()


def _frames(n: int = 4, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4, 16, 16, generator=gen)  # packed RAW is non-negative: E[x] != 0


def _weight_quantized(model: nn.Module) -> nn.Module:
    """What TFLite's weight quantization does to the float model (activations left float)."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, nn.Conv2d):
            q, scale = tflite_weight_quant(m.weight)
            m.weight.data = q * scale
    return out


def test_tflite_weight_quant_is_per_channel_symmetric_narrow() -> None:
    w = torch.tensor([[1.0, -0.5, 0.25], [-2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]).reshape(3, 3, 1, 1)
    q, scale = tflite_weight_quant(w)
    assert scale.shape == (3, 1, 1, 1)
    assert torch.allclose(scale.flatten(), torch.tensor([1 / 127, 2 / 127, 1.0]))
    assert q[0].flatten().tolist() == [127, -64, 32]  # 63.5 and 31.75: half away from zero
    assert q[1].flatten().tolist() == [-127, 0, 64] and q.abs().max() == 127 and not q[2].any()


def test_bias_correction_is_identity_for_weights_already_on_the_grid() -> None:
    net, frames = _weight_quantized(_tiny_net()), _frames()
    corrected = bias_correct(net, frames)
    with torch.no_grad():
        assert torch.allclose(corrected(frames), net(frames), atol=1e-5)
    assert corrected[0].bias is None or corrected[0].bias.abs().max() < 1e-5


@pytest.mark.parametrize("sequential", [True, False])
def test_bias_correction_shrinks_the_per_channel_mean_error(sequential: bool) -> None:
    net, frames = _tiny_net(), _frames()
    before = copy.deepcopy(net.state_dict())
    corrected = bias_correct(net, frames, sequential=sequential)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # original untouched
    assert torch.equal(corrected[0].weight, net[0].weight) and corrected[0].bias is not None  # bias created
    with torch.no_grad():
        ref = net(frames)
        plain = (_weight_quantized(net)(frames) - ref).mean(dim=(0, 2, 3)).abs()
        fixed = (_weight_quantized(corrected)(frames) - ref).mean(dim=(0, 2, 3)).abs()
    assert fixed.mean() < 0.5 * plain.mean()
    assert (fixed <= plain + 1e-6).float().mean() >= 0.75


def test_bias_correction_handles_transposed_conv() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ConvTranspose2d(6, 3, 2, stride=2)).eval()
    net[1].weight.data += 0.05  # every output channel's rounding error correlates
    frames = _frames()
    corrected = bias_correct(net, frames)

    def wq(model: nn.Module) -> nn.Module:
        out = _weight_quantized(model)
        q, scale = tflite_weight_quant(out[1].weight, axis=1)
        out[1].weight.data = q * scale
        return out
    with torch.no_grad():
        ref = net(frames)
        plain = (wq(net)(frames) - ref).mean(dim=(0, 2, 3)).abs()
        fixed = (wq(corrected)(frames) - ref).mean(dim=(0, 2, 3)).abs()
    assert fixed.mean() < 0.5 * plain.mean()


def test_sample_columns_match_the_conv() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect").eval()
    x = torch.randn(2, 4, 9, 11)
    cols = sample_columns(conv, x, 10_000, torch.Generator().manual_seed(0))
    assert cols.shape == (2 * 5 * 6, 4, 3, 3)
    idx = torch.randperm(2 * 5 * 6, generator=torch.Generator().manual_seed(0))  # the positions it drew
    with torch.no_grad():
        want = (conv(x) - conv.bias[:, None, None]).permute(0, 2, 3, 1).reshape(-1, 6)[idx]
        assert torch.allclose(_grouped_matmul(conv, cols, conv.weight), want, atol=1e-5)


def _layer_and_cols(groups: int = 1) -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups).eval()
    x = torch.randn(4, 8, 12, 12) + 0.5
    return conv, x, sample_columns(conv, x, 512, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("groups", [1, 8])
def test_adaround_reconstructs_no_worse_than_nearest_and_stays_on_the_grid(groups: int) -> None:
    conv, x, cols = _layer_and_cols(groups)
    q, scale = adaround_layer(conv, cols, iters=300, seed=0)
    q_near, scale_near = tflite_weight_quant(conv.weight)
    assert torch.equal(scale, scale_near) and (groups > 1 or not torch.equal(q, q_near))
    assert ((q - conv.weight.detach() / scale).abs() < 1.0 + 1e-5).all()  # only up/down choices
    with torch.no_grad():
        ref = nn.functional.conv2d(x, conv.weight, None, 1, 1, 1, groups)

        def mse(qq: torch.Tensor) -> float:
            return float(((nn.functional.conv2d(x, qq * scale, None, 1, 1, 1, groups) - ref) ** 2).mean())
    assert mse(q) <= mse(q_near) * (0.9 if groups == 1 else 1.0)  # depthwise: 9 weights a channel, little room
    # TFLite re-quantizing the snapped float weights recovers exactly the chosen q, at the same scale
    w_new = snap_to_grid(q, scale)
    q_back, scale_back = tflite_weight_quant(w_new)
    assert torch.equal(q_back, q)
    assert torch.allclose(scale_back, scale, rtol=1e-6, atol=0)
    assert (q.abs().amax(dim=(1, 2, 3)) == 127).all()


def test_adaround_model_snaps_convs_and_keeps_the_rest() -> None:
    net, frames = _tiny_net(), _frames()
    rounded = adaround(net, frames, iters=50, seed=0, positions=256)
    for old, new in zip(net.modules(), rounded.modules()):
        if isinstance(old, nn.Conv2d):
            q, scale = tflite_weight_quant(new.weight)
            assert torch.allclose(scale, tflite_weight_quant(old.weight)[1], rtol=1e-6, atol=0)
            assert torch.equal(q * scale, new.weight.detach())  # on the grid: TFLite changes nothing
            if old.bias is not None:
                assert torch.equal(old.bias, new.bias)
    with torch.no_grad():
        ref = net(frames)
        err_round = float(((rounded(frames) - ref) ** 2).mean())
        err_near = float(((_weight_quantized(net)(frames) - ref) ** 2).mean())
    assert err_round < 1.5 * err_near  # layer-wise objective: the end-to-end error stays in the same range

import torch
from torch import nn

from compress.fold import fold_model, fuse_conv_bn
from students import create_student


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def test_fuse_conv_bn_is_exact_without_conv_bias() -> None:
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
    _randomise_bn(nn.Sequential(bn))
    x = torch.randn(2, 3, 9, 9)
    expected = bn.eval()(conv(x))
    assert torch.allclose(fuse_conv_bn(conv, bn)(x), expected, atol=1e-5)


def test_fold_smallnet_bn_back_to_4652_params_and_same_function() -> None:
    model = create_student("smallnet", batch_norm=True).eval()
    _randomise_bn(model)
    x = torch.rand(2, 4, 16, 16)
    folded, counts = fold_model(model)
    assert counts == {"reparameterized_blocks": 0, "conv_bn_folded": 3, "batchnorm_left": 0}
    assert sum(p.numel() for p in folded.parameters()) == 4652
    assert (folded(x) - model(x)).abs().max() < 1e-5


def test_fold_sequential_conv_bn_pairs_and_reparameterize_hook() -> None:
    class Rep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.folded = False

        def reparameterize(self) -> None:
            self.folded = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Rep()).eval()
    _randomise_bn(model)
    x = torch.randn(1, 4, 8, 8)
    folded, counts = fold_model(model)
    assert counts["conv_bn_folded"] == 1 and counts["reparameterized_blocks"] == 1
    assert isinstance(folded[1], nn.Identity) and folded[3].folded
    assert (folded(x) - model(x)).abs().max() < 1e-5
    assert isinstance(model[1], nn.BatchNorm2d), "fold must not modify the original unless inplace=True"


def test_fold_keeps_the_activation_of_a_norm_act_module() -> None:
    """timm's BatchNormAct2d is a BatchNorm2d that also applies its activation: folding keeps that."""
    from timm.layers import BatchNormAct2d

    from students import STUDENTS  # noqa: F401  (makes timm importable; see teachers.torch_compat)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(8, act_layer=nn.ReLU6)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8) * 4
    folded, report = fold_model(model)
    assert report == {"reparameterized_blocks": 0, "conv_bn_folded": 1, "batchnorm_left": 0}
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert expected.min() >= 0 and expected.max() <= 6  # the ReLU6 is really there ...
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # ... and survives the fold

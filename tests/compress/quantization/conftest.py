"""A conv -> instance norm -> conv net: the PyNET-V2 Mobile pattern whose INT8 loss sits inside the norm."""
import pytest
import torch


class InstanceNormNet(torch.nn.Module):
    """TFLite runs the norm as MEAN, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, SUB, MUL, MUL, ADD (the last four in
    place), each re-quantized at INT8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.norm = torch.nn.InstanceNorm2d(8, affine=True, eps=1e-3)
        self.out = torch.nn.Conv2d(8, 12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_shuffle(self.out(self.norm(self.conv(x))), 2)


@pytest.fixture(scope="session")
def instance_norm_net() -> InstanceNormNet:
    """Channels of very different variance (as trained nets have: one int8 1/sqrt scale for all) and a
    non-trivial affine norm; callers must not modify it."""
    torch.manual_seed(0)
    model = InstanceNormNet().eval()
    with torch.no_grad():
        model.conv.weight.mul_(torch.logspace(-2, 0, 8).view(8, 1, 1, 1))
        model.norm.weight.uniform_(0.5, 2.0)
        model.norm.bias.uniform_(-0.5, 0.5)
    return model

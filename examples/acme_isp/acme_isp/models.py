"""ACME's teacher and student, registered with ispdc (imported by ispdc through the entry point).

The ispdc model contract (docs/your-model.md in ispdc): packed RAW ``N x 4 x H x W`` in [0, 1] in,
sRGB ``N x 3 x 2H x 2W`` out; ``ModelInfo`` says which H, W the model takes; optional
``feature_taps`` (module paths for feature distillation), ``prune_ignore`` and ``reparameterize()``
on blocks that fold into one conv for export.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teachers.registry import STUDENTS, TEACHERS, ModelInfo


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a skip: the teacher's unit of depth."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(x)))


class AcmeUNet(nn.Module):
    """A two-scale U-Net: full packed resolution and half of it, joined by a learned upsampling."""

    feature_taps = ("enc", "dec")

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, width, 3, padding=1)
        self.enc = ResidualBlock(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = nn.Sequential(ResidualBlock(2 * width), ResidualBlock(2 * width))
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = ResidualBlock(width)
        self.head = nn.Conv2d(width, 3 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(F.silu(self.stem(x)))
        y = self.up(self.mid(F.silu(self.down(skip))))
        return torch.sigmoid(self.shuffle(self.head(self.dec(y + skip))))


class TwinBranchConv(nn.Module):
    """A 3x3 and a 1x1 conv side by side while training; ``reparameterize()`` sums them into one 3x3."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.k3 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.k1: nn.Conv2d | None = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k3(x) if self.k1 is None else self.k3(x) + self.k1(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.k1 is None:
            return
        self.k3.weight += F.pad(self.k1.weight, (1, 1, 1, 1))
        assert self.k3.bias is not None and self.k1.bias is not None
        self.k3.bias += self.k1.bias
        self.k1 = None


class AcmeTiny(nn.Module):
    """The phone model: a twin-branch stem, a depthwise-separable body, a sub-pixel head."""

    feature_taps = ("body",)

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = TwinBranchConv(4, width)
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, groups=width), nn.Conv2d(width, width, 1), nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(width, 3 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.shuffle(self.head(self.body(F.relu(self.stem(x))))), 0.0, 1.0)


@TEACHERS.register("acme_unet", ModelInfo(tiny_config={"width": 8}, input_multiple=2, min_input=8))
def acme_unet(width: int = 32) -> AcmeUNet:
    return AcmeUNet(width=width)


@STUDENTS.register("acme_tiny", ModelInfo(tiny_config={"width": 8}, input_multiple=1, min_input=4))
def acme_tiny(width: int = 16) -> AcmeTiny:
    return AcmeTiny(width=width)

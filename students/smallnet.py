"""Smallnet (team dh_isp, MAI 2021 report, seed 001, Fig. 3).

Three 3x3 convs with 16, 16 and 12 channels, ``tanh`` after the first and ReLU after the other two,
then a x2 pixel shuffle from 12 channels to 3: exactly 4,652 parameters for 4-channel packed input.
``width`` scales the two hidden layers (the 12-channel layer is fixed by the pixel shuffle).

``batch_norm=True`` adds training-time BatchNorm after each conv (faster, steadier short trainings);
``compress.fold`` merges it back into the convs, so the shipped net is the 4,652-parameter Smallnet.
"""
from __future__ import annotations

import torch
from torch import nn

from students.registry import STUDENTS
from teachers.registry import ModelInfo


class Smallnet(nn.Module):
    """Packed RAW ``(N, 4, H, W)`` in [0, 1] -> sRGB ``(N, 3, 2H, 2W)``."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
    prune_ignore = ("conv3",)  # feeds the pixel shuffle: its 12 = 3 * 2^2 channels are the RGB output
    feature_taps = ("act1", "act2", "act3")  # module paths of the features distillation can match

    def __init__(
        self, width: int = 16, in_channels: int = 4, out_channels: int = 3, scale: int = 2, batch_norm: bool = False
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"Smallnet width must be >= 1; got {width}")
        shuffled = out_channels * scale * scale

        def norm(channels: int) -> nn.Module:
            return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()

        self.conv1, self.bn1, self.act1 = nn.Conv2d(in_channels, width, 3, padding=1), norm(width), nn.Tanh()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(width, width, 3, padding=1), norm(width), nn.ReLU()
        self.conv3, self.bn3, self.act3 = nn.Conv2d(width, shuffled, 3, padding=1), norm(shuffled), nn.ReLU()
        # scale 1 (the clean-image teacher body): no shuffle at all, TFLite has no 1x1 depth-to-space
        self.shuffle = nn.PixelShuffle(scale) if scale > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.shuffle(self.act3(self.bn3(self.conv3(x))))


@STUDENTS.register("smallnet", ModelInfo(
    tiny_config={"width": 8}, paper={"params": 4_652, "params_tolerance": 0, "source": "MAI 2021 report (seed 001), team dh_isp"}))
def smallnet(width: int = 16, batch_norm: bool = False) -> Smallnet:
    return Smallnet(width=width, batch_norm=batch_norm)

"""Smallnet (team dh_isp, MAI 2021 report, seed 001, Fig. 3).

Three 3x3 convs with 16, 16 and 12 channels, ``tanh`` after the first and ReLU after the other two,
then a x2 pixel shuffle from 12 channels to 3: exactly 4,652 parameters for 4-channel packed input.
``width`` scales the two hidden layers (the 12-channel layer is fixed by the pixel shuffle).

``batch_norm=True`` adds training-time BatchNorm after each conv (faster, steadier short trainings);
``compress.fold`` merges it back into the convs, so the shipped net is the 4,652-parameter Smallnet.

``block`` trains each conv as a re-parameterizable block (``students.reparam``: ``"repvgg"``,
``"ecb"``, ``"ereop"``); folding turns each back into one 3x3 conv, so the shipped net is the same.
A block folds its own BatchNorm (``convN.norm``), so ``conv_bn_pairs`` is empty then.  ``conv3``
(which feeds the pixel shuffle) is a block too: it stays in ``prune_ignore`` as a whole.
"""
from __future__ import annotations

from typing import cast

import torch
from torch import nn

from students.reparam import BlockKind, check_block, make_conv
from teachers.registry import STUDENTS, TEACHERS, ModelInfo

OUTPUT_BIAS = 0.5
"""Initial bias of conv3 (of its BatchNorm with ``batch_norm``): every output channel starts at mid-grey.

With PyTorch's default (uniform, about +-0.1) init, an early Adam step can push one of the 12 channels
before the last ReLU below zero on every pixel; the ReLU then passes no gradient and that colour at
that sub-pixel stays black for good.  Measured (1000 steps, lr 3e-3, held-out scene set): 1 seed in
3 ended near 17.4 dB with channel 9 dead; with the output starting at 0.5 seeds 1, 3, 4 reached
23.0-23.3 dB against 17.4, 22.7, 22.2 dB.  A rep block (``block``) keeps its own init."""
TRUNK_TAP = "act2"
"""Where the shared trunk ends (``width`` channels at the packed resolution); conv3 + shuffle are the top."""


class Smallnet(nn.Module):
    """Packed RAW ``(N, 4, H, W)`` in [0, 1] -> sRGB ``(N, 3, 2H, 2W)``."""

    conv_bn_pairs: tuple[tuple[str, str], ...] = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
    prune_ignore: tuple[str, ...] = ("conv3",)  # feeds the pixel shuffle: its 12 = 3 * 2^2 channels are the RGB output
    feature_taps: tuple[str, ...] = ("act1", "act2", "act3")  # module paths of the features distillation can match

    def __init__(
        self, width: int = 16, in_channels: int = 4, out_channels: int = 3, scale: int = 2, batch_norm: bool = False,
        block: BlockKind = "conv",
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"Smallnet width must be >= 1; got {width}")
        check_block(block)
        shuffled = out_channels * scale * scale

        def layer(cin: int, cout: int) -> tuple[nn.Module, nn.Module]:
            """``(conv, bn)``: a plain conv keeps its BN beside it, a rep block carries (and folds) its own."""
            if block != "conv":
                return make_conv(block, cin, cout, 3, norm=batch_norm), nn.Identity()
            return nn.Conv2d(cin, cout, 3, padding=1), (nn.BatchNorm2d(cout) if batch_norm else nn.Identity())

        if block != "conv":
            self.conv_bn_pairs = ()
        self.conv1, self.bn1 = layer(in_channels, width)
        self.act1 = nn.Tanh()
        self.conv2, self.bn2 = layer(width, width)
        self.act2 = nn.ReLU()
        self.conv3, self.bn3 = layer(width, shuffled)
        self.act3 = nn.ReLU()
        # scale 1 (the clean-image teacher body): no shuffle at all, TFLite has no 1x1 depth-to-space
        self.shuffle = nn.PixelShuffle(scale) if scale > 1 else nn.Identity()
        if block == "conv":
            output_layer = self.bn3 if batch_norm else self.conv3
            nn.init.constant_(cast(torch.Tensor, output_layer.bias), OUTPUT_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.shuffle(self.act3(self.bn3(self.conv3(x))))


@STUDENTS.register("smallnet", ModelInfo(
    tiny_config={"width": 8}, trunk_tap=TRUNK_TAP,
    paper={"params": 4_652, "params_tolerance": 0, "source": "MAI 2021 report (seed 001), team dh_isp"}))
def smallnet(width: int = 16, batch_norm: bool = False, block: BlockKind = "conv") -> Smallnet:
    return Smallnet(width=width, batch_norm=batch_norm, block=block)


@TEACHERS.register("smallnet_wide", ModelInfo(tiny_config={"width": 16}))
def smallnet_wide(width: int = 64, batch_norm: bool = False) -> Smallnet:
    """Smallnet at width 64 (46,220 parameters) as a teacher: the same local receptive field with four
    times the channels.  On 7 training photos it beats the U-Net teachers held out (24.2 dB against
    PUNET's 20.8 at 3000 steps, docs/benchmarks.md), so its labels are worth learning from."""
    return Smallnet(width=width, batch_norm=batch_norm)

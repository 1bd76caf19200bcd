"""PUNET: the U-Net baseline of the MAI 2021 learned smartphone ISP challenge (seed 001, Sec. 4.3).

Follows the challenge's reference TensorFlow model: 3x3 double-conv blocks with LeakyReLU(0.2), four
max-pool levels down to 1/16 of the packed input, a residual bottleneck, transposed-conv upsampling with
concatenation skips, one more x2 transposed conv to full resolution and ``tanh(x) * 0.58 + 0.5``.
``base_width`` is the reference ``num_maps_base`` (16 in the challenge); instance norm is optional as in
the reference code (off by default there).
"""
from __future__ import annotations

import torch
from torch import nn

from teachers.registry import TEACHERS, ModelInfo


class ConvLReLU(nn.Sequential):
    """3x3 conv (+ optional instance norm) + LeakyReLU(0.2) (TF's leaky_relu default slope).

    PyTorch's default init is kept: the reference's N(0, 0.01) init trains slowly in short CPU runs.
    """

    def __init__(self, cin: int, cout: int, instance_norm: bool = False) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
        if instance_norm:
            layers.append(nn.InstanceNorm2d(cout, affine=True, eps=1e-3))
        layers.append(nn.LeakyReLU(0.2))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """The reference ``_conv_multi_block(max_size=3)``: two 3x3 conv layers."""

    def __init__(self, cin: int, cout: int, instance_norm: bool = False) -> None:
        super().__init__(ConvLReLU(cin, cout, instance_norm), ConvLReLU(cout, cout, instance_norm))


class UpConv(nn.Sequential):
    """Transposed 3x3 conv, stride 2 (TF 'SAME' -> exact x2 size) + LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), nn.LeakyReLU(0.2))


class PUNET(nn.Module):
    """Packed RAW ``(N, 4, H, W)`` in [0, 1] -> sRGB ``(N, 3, 2H, 2W)``; H and W divisible by 16."""

    prune_ignore: tuple[str, ...] = ("head",)  # its 3 output channels are the RGB image
    # per-level features, coarse to fine
    feature_taps: tuple[str, ...] = ("bottleneck4", "dec4", "dec3", "dec2", "dec1")

    def __init__(self, base_width: int = 16, instance_norm: bool = False, in_channels: int = 4) -> None:
        super().__init__()
        if base_width < 4:
            raise ValueError(f"PUNET base_width must be >= 4 (it is split by 4 at level 0); got {base_width}")
        w = base_width
        norm = instance_norm
        self.pool = nn.MaxPool2d(2)
        self.down1 = DoubleConv(in_channels, w)
        self.down2 = DoubleConv(w, 2 * w, norm)
        self.down3 = DoubleConv(2 * w, 4 * w, norm)
        self.down4 = DoubleConv(4 * w, 8 * w, norm)
        self.bottleneck1 = DoubleConv(8 * w, 16 * w, norm)
        self.bottleneck2 = DoubleConv(16 * w, 16 * w, norm)
        self.bottleneck3 = DoubleConv(16 * w, 16 * w, norm)
        self.bottleneck4 = DoubleConv(16 * w, 16 * w, norm)
        self.up4 = UpConv(16 * w, 8 * w)
        self.dec4 = DoubleConv(16 * w, 8 * w, norm)
        self.up3 = UpConv(8 * w, 4 * w)
        self.dec3 = DoubleConv(8 * w, 4 * w, norm)
        self.up2 = UpConv(4 * w, 2 * w)
        self.skip2 = DoubleConv(2 * w, 2 * w, norm)
        self.dec2 = DoubleConv(4 * w, 2 * w, norm)
        self.up1 = UpConv(2 * w, w)
        self.skip1 = DoubleConv(w, w)
        self.dec1 = DoubleConv(3 * w, w)
        self.up0 = UpConv(w, w // 4)
        self.head = nn.Conv2d(w // 4, 3, 3, padding=1)

    def _bottleneck_out(self, b3: torch.Tensor) -> torch.Tensor:
        """The bottleneck's last block; AA-UNet puts its self-attention after it."""
        return self.bottleneck4(b3)

    def unet_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The bottleneck output, then the decoder levels ``dec4`` .. ``dec1`` (coarse to fine)."""
        l1 = self.down1(x)
        l2 = self.down2(self.pool(l1))
        l3 = self.down3(self.pool(l2))
        l4 = self.down4(self.pool(l3))
        b1 = self.bottleneck1(self.pool(l4))
        b2 = self.bottleneck2(b1) + b1
        b3 = self.bottleneck3(b2) + b2
        b = self._bottleneck_out(b3)
        d4 = self.dec4(torch.cat([l4, self.up4(b)], 1))
        d3 = self.dec3(torch.cat([l3, self.up3(d4)], 1))
        d2 = self.dec2(torch.cat([self.skip2(l2), self.up2(d3)], 1))
        d1 = self.dec1(torch.cat([self.skip1(l1), self.up1(d2), l1], 1))
        return b, d4, d3, d2, d1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.up0(self.unet_features(x)[-1]))) * 0.58 + 0.5


@TEACHERS.register("punet", ModelInfo(tiny_config={"base_width": 4}, input_multiple=16, min_input=16))
def punet(base_width: int = 16, instance_norm: bool = False) -> PUNET:
    return PUNET(base_width=base_width, instance_norm=instance_norm)

"""CSANet (team AIISP, MAI 2021 report, seed 001, Sec. 4.2, Figs. 4-5; Hsyu et al., CVPRW 2021).

What the report fixes: two convolutional blocks with ReLU extract features and downsize the packed
RAW; a cascade of double attention modules (DAM) with skip connections follows; a transposed
convolution and a depth-to-space op upscale to the target size; a conventional convolution with a
sigmoid restores the RGB image.  Inside a DAM, the features "obtained after applying two
convolutions" go through spatial attention (SA: a depth-wise *dilated* 5x5 conv whose output
multiplies the input) and channel attention (CA: squeeze by per-map means, excite by two 1x1 convs
with ReLU and sigmoid, multiplying the input); the two results are concatenated and fused by a 1x1
conv.  Table 1 gives a 123 KB TFLite model, 90.8 ms for a Full-HD frame on the Dimensity 1000+ APU
(Smallnet: 21 KB, 61 ms), 23.73 dB PSNR; no parameter count.

Choices the report leaves open (ours, with why):

* **Channels and depth**: 16 channels at ``width=1`` everywhere (stem, DAMs, upsampler) and
  **3 DAMs**: 26,572 parameters.  The report gives neither, only the 123 KB TFLite file; this
  default exports (``compress.export.tflite``, fp32) to 123,700 bytes, and the same converter turns
  Smallnet into 21,016 bytes against the report's 21 KB, so sizes compare like for like (4 DAMs:
  32,304 parameters, 150,588 bytes).  At Full HD it needs 4.2 GMACs against Smallnet's 2.4, in line
  with the reported 90.8 ms against 61 ms.
* **Strides**: the first stem conv has stride 2, the second stride 1, so the DAMs run at a quarter
  of the RAW resolution and the x2 transposed conv plus the x2 depth-to-space give exactly the
  full-resolution output.  Two stride-2 convs would need a x4 depth-to-space the report does not
  mention.  Hence ``input_multiple=2``.
* **Stem**: 3x3 convs, no normalisation.
* **DAM body** ("two convolutions"): 3x3 conv, ReLU, 3x3 conv, inside each DAM (as in the dual
  attention block of CycleISP that DAM refines); its **skip**: the DAM adds its input to the fused
  output.  A long skip adds the stem output to the DAM cascade's output after one more 3x3 conv
  (the "skip connections [that] keep the similarities between feature maps of different blocks").
* **SA**: dilation 2 (a 9x9 receptive field), bias, sigmoid gate (the report says the output
  multiplies the input, i.e. an attention map).
* **CA**: reduction 4 (hidden ``max(1, C // 4)``), convs with bias.
* **Upsampler**: ``ConvTranspose2d`` 3x3, stride 2 (TensorFlow's ``padding='same'``: padding 1,
  output padding 1) with ReLU, then a 3x3 conv to 12 = 3 * 2^2 channels, ``PixelShuffle(2)`` to 3
  channels, a 3x3 conv 3 -> 3 and the sigmoid.  The conv between the transposed conv and the
  depth-to-space is ours: ``compress.export.onnx_export`` turns PyTorch's CRD pixel shuffle into TFLite's
  native DCR ``DEPTH_TO_SPACE`` by permuting the output channels of a feeding ``Conv`` only (a
  ``ConvTranspose`` feeding it would export as a 6-D reshape/transpose chain).
* ``width`` multiplies the 16 channels (``max(1, round(16 * width))``); the 12-channel shuffle conv
  and the RGB head are fixed.

Training in the report (Charbonnier + VGG-19 + SSIM, Adam 5e-4 -> 1e-5, 100K iterations, batch 100)
is a recipe matter, not built here.
"""
from __future__ import annotations

import torch
from torch import nn

from teachers.registry import STUDENTS, ModelInfo

BASE_CHANNELS = 16
NUM_DAMS = 3


class SpatialAttention(nn.Module):
    """``x * sigmoid(dwconv5x5_dilated(x))``: a per-pixel, per-channel map with a wide, cheap view."""

    def __init__(self, channels: int, kernel_size: int = 5, dilation: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=dilation * (kernel_size // 2),
                              dilation=dilation, groups=channels)
        self.gate = nn.Sigmoid()

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class ChannelAttention(nn.Module):
    """Squeeze-and-excite: per-map means -> 1x1 conv, ReLU -> 1x1 conv, sigmoid -> scale each map."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.excite = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        # mean over (H, W) with keepdim: exports as ReduceMean -> TFLite MEAN (no adaptive pooling)
        return self.gate(self.excite(self.act(self.squeeze(x.mean(dim=(2, 3), keepdim=True)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class DoubleAttentionModule(nn.Module):
    """DAM (report Fig. 5): conv-ReLU-conv, SA and CA in parallel, concat, 1x1 fusion, plus its input."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.spatial = SpatialAttention(channels)
        self.channel = ChannelAttention(channels, reduction)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.conv2(self.act(self.conv1(x)))
        return x + self.fuse(torch.cat([self.spatial(body), self.channel(body)], dim=1))


class CSANet(nn.Module):
    """Packed RAW ``(N, 4, H, W)`` in [0, 1] (H, W even) -> sRGB ``(N, 3, 2H, 2W)`` in (0, 1)."""

    prune_ignore = ("to_shuffle", "head")  # 12 = 3 * 2^2 channels into the pixel shuffle; the RGB head

    def __init__(self, width: float = 1.0, num_dams: int = NUM_DAMS, reduction: int = 4,
                 in_channels: int = 4, out_channels: int = 3, scale: int = 2) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"CSANet width must be > 0; got {width}")
        if num_dams < 1:
            raise ValueError(f"CSANet needs at least one DAM; got num_dams={num_dams}")
        c = max(1, round(BASE_CHANNELS * width))
        self.channels = c
        self.stem1, self.stem_act1 = nn.Conv2d(in_channels, c, 3, stride=2, padding=1), nn.ReLU()
        self.stem2, self.stem_act2 = nn.Conv2d(c, c, 3, padding=1), nn.ReLU()
        self.dams = nn.Sequential(*[DoubleAttentionModule(c, reduction) for _ in range(num_dams)])
        self.body_conv = nn.Conv2d(c, c, 3, padding=1)
        self.up = nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1)
        self.up_act = nn.ReLU()
        self.to_shuffle = nn.Conv2d(c, out_channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self.head = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.out_act = nn.Sigmoid()
        # each DAM's output (after its skip), shallow to deep; all at a quarter of the RAW resolution
        self.feature_taps = tuple(f"dams.{i}" for i in range(num_dams))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:  # the stride-2 stem and the x2 transposed conv round-trip even sizes only
            raise ValueError(f"CSANet needs even packed H and W; got {h}x{w}")
        stem = self.stem_act2(self.stem2(self.stem_act1(self.stem1(x))))
        feats = stem + self.body_conv(self.dams(stem))
        up = self.up_act(self.up(feats))
        return self.out_act(self.head(self.shuffle(self.to_shuffle(up))))


@STUDENTS.register("csanet", ModelInfo(
    tiny_config={"width": 0.25, "num_dams": 2}, input_multiple=2, min_input=2,
    paper={"tflite_kb": 123, "runtime_ms": 90.8, "psnr": 23.73,
           "source": "MAI 2021 report (seed 001) Table 1, team AIISP: no parameter count given"}))
def csanet(width: float = 1.0, num_dams: int = NUM_DAMS) -> CSANet:
    return CSANet(width=width, num_dams=num_dams)

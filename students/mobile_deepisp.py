"""Mobile DeepISP (Zhang, seed 003): a MobileNetV2 encoder with a light decoder, RAW -> sRGB.

What the paper fixes (Sec. 3.2): an end-to-end network "MobileNetV2-based [...] adapted to accept
RAW input", plus "a decoder to reconstruct the full-resolution sRGB image", trained with L1 (Sec. 3.5);
after training, int8 quantization and pruning (Sec. 3.4) cut the model size by ~50 % and bring
inference to ~20 ms per image (Sec. 4.1: ~38 dB PSNR, ~0.95 SSIM on Zurich RAW-to-RGB).  It reports
no parameter count, layer widths, decoder layout or input size.  The pruning and int8 PTQ are this
toolkit's prune and quantize stages, not part of the module.

Everything else is left open by the paper; the choices made here:

* Input: our packed 4-channel Bayer (N, 4, H, W) at half resolution instead of the paper's
  single-channel mosaic, so timm's MobileNetV2 is built with ``in_chans=4`` (random init, never
  pretrained weights: ImageNet RGB filters do not apply to a Bayer mosaic).
* Encoder: timm ``mobilenetv2_100`` unchanged (BatchNorm, ReLU6, stride-2 stem) as a feature
  extractor: all five stage outputs (``out_indices`` 0-4, strides 2, 4, 8, 16, 32 of the packed
  input, 16/24/32/96/320 channels at width 1); the 1280-channel classifier head is not built.
* ``width`` is timm's ``channel_multiplier`` (channels rounded to multiples of 8, at least 8, the stem
  scaled too); the decoder scales with it because each decoder block has the channel count of the
  encoder stage it merges with.
* Decoder: U-Net style, one block per encoder stride (16, 8, 4, 2) and one at the packed input's
  resolution: x2 bilinear upsampling (``align_corners=False``: TFLite RESIZE_BILINEAR with half-pixel
  centres; no transposed convs, so no checkerboard), concatenation with the skip (the encoder stage
  of that stride; at stride 1 the packed RAW input itself, so the finest block sees unfiltered
  mosaic detail), then MobileNetV2-style convs: 1x1 merge, 3x3 depthwise, 1x1, each BatchNorm +
  ReLU6 (BN folds into the convs at the fold stage).
* Head: 3x3 conv to 12 channels, sigmoid (output in (0, 1) without clipping), x2 PixelShuffle to
  full-resolution sRGB (N, 3, 2H, 2W).
* Sizes: the stride-32 encoder needs packed H and W to be multiples of 32 (``input_multiple=32``);
  they are checked, not padded, so the exported graph is pure convs/resizes (Zurich 448x448 RAW ->
  224x224 packed and MAI21 256x256 -> 128x128 already qualify; 1080p output needs a 1088-row frame).

Folding: timm's blocks keep conv and BN as named attributes (``conv_pw``/``bn1``, ...), not inside an
``nn.Sequential``, and their BN is timm's ``BatchNormAct2d`` (BN with the activation inside it), so
``compress.fold``'s generic Conv+BN pass neither finds them nor could replace the BN by Identity
without losing the ReLU6.  ``MobileNetV2Encoder.reparameterize`` (called by ``fold_model``) fuses
every known pair itself and leaves the activation in place of the BN.
"""
from __future__ import annotations

import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.efficientnet import EfficientNetFeatures, _gen_mobilenet_v2
from torch import nn

import teachers.torch_compat  # noqa: F401  (before timm: torchvision on CPU torch, see that module)
from students.reparam import fold_conv_bn_pair
from teachers.registry import STUDENTS, ModelInfo

ENCODER_STAGES = (0, 1, 2, 3, 4)  # timm feature indices: strides 2, 4, 8, 16, 32
STRIDE = 32

# timm module type -> its (conv, BatchNormAct2d) attribute pairs, in data-flow order.
_TIMM_CONV_BN_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    EfficientNetFeatures: (("conv_stem", "bn1"),),
    DepthwiseSeparableConv: (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    InvertedResidual: (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}


class MobileNetV2Encoder(nn.Module):
    """timm MobileNetV2 feature extractor (random init) returning the five stage outputs, fine first."""

    def __init__(self, width: float = 1.0, in_channels: int = 4) -> None:
        super().__init__()
        # ``timm.create_model("mobilenetv2_100", ...)`` hard-codes channel_multiplier=1.0 (passing it
        # again is a duplicate keyword), so the width goes through the generator that entry point calls.
        self.backbone: EfficientNetFeatures = _gen_mobilenet_v2(
            "mobilenetv2_100", channel_multiplier=width, pretrained=False,
            features_only=True, in_chans=in_channels, out_indices=ENCODER_STAGES,
        )
        self.channels: list[int] = self.backbone.feature_info.channels()
        self.stage_paths: list[str] = [f"backbone.{n}" for n in self.backbone.feature_info.module_name()]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold every timm Conv+BatchNormAct2d pair into one biased conv followed by the activation.

        ``compress.fold.fold_model`` calls this (eval mode); the result is the same function.
        """
        for module in list(self.backbone.modules()):
            for conv_name, bn_name in _TIMM_CONV_BN_PAIRS.get(type(module), ()):
                conv, bn = getattr(module, conv_name), getattr(module, bn_name)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):  # else: folded already
                    fused, after = fold_conv_bn_pair(conv, bn)
                    setattr(module, conv_name, fused)
                    setattr(module, bn_name, after)
        left = [n for n, m in self.backbone.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if left:
            raise RuntimeError(f"MobileNetV2Encoder.reparameterize: unfolded BatchNorm at {left[:5]}")


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6()]


class DecoderBlock(nn.Module):
    """x2 bilinear upsample, concat the skip, then 1x1 merge / 3x3 depthwise / 1x1 (BN + ReLU6 each)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.convs = nn.Sequential(
            *_conv_bn_relu6(in_channels + skip_channels, out_channels),
            *_conv_bn_relu6(out_channels, out_channels, kernel=3, groups=out_channels),
            *_conv_bn_relu6(out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class MobileDeepISP(nn.Module):
    """Packed RAW ``(N, 4, H, W)`` in [0, 1], H and W multiples of 32 -> sRGB ``(N, 3, 2H, 2W)`` in (0, 1)."""

    prune_ignore = ("head",)  # the RGB head: its 12 = 3 * 2^2 channels feed the pixel shuffle
    feature_taps = (  # coarse to fine: encoder stages (strides 32..2), then decoder blocks (strides 16..1)
        "encoder.backbone.blocks.6", "encoder.backbone.blocks.4", "encoder.backbone.blocks.2",
        "encoder.backbone.blocks.1", "encoder.backbone.blocks.0",
        "decoder.0", "decoder.1", "decoder.2", "decoder.3", "decoder.4",
    )

    def __init__(self, width: float = 1.0, in_channels: int = 4, out_channels: int = 3, scale: int = 2) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"MobileDeepISP width must be > 0; got {width}")
        self.encoder = MobileNetV2Encoder(width, in_channels)
        chans = self.encoder.channels  # fine (stride 2) to coarse (stride 32)
        # decoder[i] upsamples to stride 16, 8, 4, 2, 1; skips: encoder stages 3..0, then the input.
        skips = [*chans[-2::-1], in_channels]
        outs = [*chans[-2::-1], chans[0]]
        ins = [chans[-1], *outs[:-1]]
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, outs))
        self.head = nn.Conv2d(outs[-1], out_channels * scale * scale, 3, padding=1)
        self.out_act = nn.Sigmoid()
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % STRIDE or w % STRIDE:
            raise ValueError(f"MobileDeepISP needs packed H and W that are multiples of {STRIDE}; got {h}x{w}")
        features = self.encoder(x)
        skips = [*features[-2::-1], x]
        y = features[-1]
        for block, skip in zip(self.decoder, skips):
            y = block(y, skip)
        return self.shuffle(self.out_act(self.head(y)))


@STUDENTS.register("mobile_deepisp", ModelInfo(
    tiny_config={"width": 0.25}, input_multiple=STRIDE, min_input=STRIDE,
    paper={"source": "Mobile DeepISP (seed 003), Sec. 3.2-4.1: no parameter count given",
           "psnr": 38.0, "ssim": 0.95, "latency_ms": 20, "size_reduction_after_prune_and_int8": 0.5}))
def mobile_deepisp(width: float = 1.0) -> MobileDeepISP:
    return MobileDeepISP(width=width)

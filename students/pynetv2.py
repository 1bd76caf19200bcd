"""PyNET-V2 Mobile (Ignatov et al., seed 000): Sec. III "Architecture", Fig. 3; variants Sec. IV-E, Table IV.

The paper's text is short on detail, so layer sizes follow the authors' released TensorFlow model
(github.com/gmalivenko/PyNET-v2, ``model.py``), whose level-1 output is the shipped network (its
``ckpt2pb_keras.py`` exports ``LEVEL = 1``; ``train.sh`` trains levels 3, 2, 1 in turn):

* **Input.** The paper's model "accepts the raw RGBG Bayer data" and groups it into 4 maps with
  space-to-depth.  Our input *is* that space-to-depth output: packed Bayer ``(N, 4, H, W)`` at half
  resolution, as in the released code (its data loader packs B, Gb, R, Gr and feeds 4-channel
  patches; no space-to-depth op in the graph).  Channel order is a data setting.
* **Inverted pyramid, three scales.** Level 1 at ``H x W`` (32 channels), level 2 at 1/2 (64),
  level 3 at 1/4 (128): filters halve at each *higher* (finer) scale.  Downsampling is a 2x2
  stride-2 conv + PReLU (the code's choice; the paper only says convs are 3x3 "except for the
  attention blocks").  Coarse features go up by x2 bilinear resize + 3x3 conv + PReLU and are
  *added* to the finer level's 3x3 conv of its skip (the paper says "concatenated"; the code adds).
* **Convs.** 3x3 with reflection padding (the code's ``tf.pad(..., 'REFLECT')``), each followed by a
  per-channel PReLU; ``padding_mode="zeros"`` is offered for delegates that dislike MIRROR_PAD.
* **Grouped residual blocks.** Channels split into 2 or 4 groups, each group ``depth`` residual
  3x3 conv + PReLU layers; instance norm (affine, eps 1e-3 as tfa's) on groups 0, 2 (the code's
  ``i % 2 == 0``: the paper's "each second" group counted from the first); concat, 1x1 conv, + input.
  Level 3: 4 groups x 2 layers; level 2: 2 groups x 3 layers; level 1: (4 groups x 1) then (2 x 1).
* **SAM.** 3x3 conv + PReLU, depthwise 5x5 conv, sigmoid, multiplied with the conv's output.
* **CAM.** 3x3 conv + PReLU; a 1x1 stride-3 and a 3x3 stride-3 conv (both unpadded, + PReLU: /9
  per side, the paper's "reduce the resolution ... by 9 times"); global mean; 1x1 conv + PReLU,
  1x1 conv, sigmoid; multiplied channel-wise with the conv's output.  Both attention blocks sit in a
  residual (``x + block(x)``), as in the code.
* **Head.** 1x1 conv to 16 maps, x2 pixel shuffle to 4 maps at full resolution, 3x3 conv to RGB,
  tanh.  The code maps tanh to ``0.58 * tanh + 0.5`` (range -0.08 ... 1.08); our convention is an
  output in [0, 1], so ``output_scale`` defaults to 0.5, i.e. ``(tanh + 1) / 2``; pass 0.58 for the
  released mapping.

Choices the paper (and code) leave open, or where we differ on purpose:

* The head's PReLU: the code applies it to the 16 maps *before* the pixel shuffle.  A per-channel
  PReLU between a conv and its pixel shuffle blocks ``compress.export.onnx_export``'s CRD->DCR rewrite
  (which only looks through element-wise ops), leaving a 6-D reshape/transpose in TFLite instead of
  DEPTH_TO_SPACE.  We apply it to the 4 shuffled maps instead: 12 parameters fewer (930,243 vs the
  code's 930,255 at full width), same structure otherwise.
* The coarse levels' RGB heads (only used while training levels 3 and 2) are not built.
* Weight init: PyTorch defaults (the code uses truncated-normal std 0.01 kernels, PReLU slope 0).
* **NoNorm**: every instance norm removed.
* **Slim**: "a strided convolution with stride 2 in the first layer, and an additional 2 times pixel
  shuffle at the end", feature maps doubled (64 / 128 / 256).  The first layer stays a 3x3 conv
  (stride 2, reflection pad 1); the extra shuffle is appended literally: the last 3x3 conv emits
  12 maps that a x2 pixel shuffle turns into RGB (the head's 16 maps are the Bayer-like 4 x 2^2, not
  doubled).
* **Slim+**: Slim with "depthwise convolution applied after the bilinear upsampling" instead of the
  3x3 conv.  A depthwise conv cannot halve the channels the finer level expects, so a 1x1 conv does
  it *before* the resize: a 1x1 conv commutes exactly with bilinear resizing (both linear, one mixes
  only channels, the other only pixels, and bilinear keeps constants), so this equals "resize, 1x1,
  depthwise" at a quarter of the 1x1's cost.  Then depthwise 3x3 + PReLU.

Size: full width, 930,243 parameters (``pynetv2_mobile``); its fp32 TFLite (``compress.export.tflite``) is
3,773,144 bytes = 3.60 MiB for a 64x96 packed input (3,793,992 at 28x32, where onnx2tf keeps the
instance norms' affine as separate ops), against the paper's "3.6 MB" (Sec. III, "Model size").
Other variants: see their factories' docstrings.  Input: H and W multiples of 4 (8 for Slim) and at
least 28 (56 for Slim): level 3 must be >= 7x7 for the CAM's two unpadded stride-3 convs.

Pruning (torch-pruning 1.6 through ``compress.pruning.prune``): every conv writing a level's channels is tied
to that level's grouped blocks, whose parts may come out unequal.  Three details keep that exact:
parts are channel *slices* (torch-pruning's ``torch.split`` mapping follows graph-traversal order
and pruned the wrong parts), each residual is written ``part + layer(part)`` (torch-pruning sizes a
concat input from an add's last operand), and each level's grouped blocks are registered before
any other conv writing its channels (module order): a rebuild from a channel plan trims trailing
channels conv by conv in module order, so a branch conv first trims its own part, and level 1's
quarters (first block) fix its halves (second block).  torch-pruning cannot trace a part of one
channel (a 1-parameter PReLU reads as shared), hence level 1 >= 8 channels as built.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from teachers.registry import STUDENTS, ModelInfo

VARIANTS = ("full", "nonorm", "slim", "slim_plus")
BASE_WIDTH = 32  # level-1 channels of the full model (levels 2 and 3: x2, x4)
CHANNEL_MULTIPLE = 4  # level 1 (and level 3) split into 4 groups
MIN_LEVEL1 = 8  # >= 2 channels per level-1 quarter: torch-pruning cannot trace a 1-channel PReLU group
HEAD_MAPS = 4  # the head shuffles to 4 Bayer-like maps before the RGB conv
MIN_LEVEL3 = 7  # CAM: 1x1 stride-3 then 3x3 stride-3, both unpadded, need >= 7 pixels
PADDING_MODES = ("reflect", "zeros")
IN_EPS = 1e-3  # tensorflow_addons InstanceNormalization default, as in the released model


def level1_channels(width: float, slim: bool = False) -> int:
    """Level-1 channels: ``32 * width`` (``64 * width`` for Slim), rounded to a multiple of 4, >= 8."""
    base = BASE_WIDTH * (2 if slim else 1) * width
    return max(MIN_LEVEL1, int(base / CHANNEL_MULTIPLE + 0.5) * CHANNEL_MULTIPLE)


class ConvAct(nn.Module):
    """Conv (+ affine instance norm) (+ per-channel PReLU): the released ``_conv_layer``.

    ``same=True`` pads ``k // 2`` on every side (reflection by default) so stride 1 keeps the size;
    ``same=False`` is the code's unpadded 'VALID' (the 2x2 downsampling and CAM stride-3 convs).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, act: bool = True,
                 norm: bool = False, same: bool = True, groups: int = 1, padding_mode: str = "reflect") -> None:
        super().__init__()
        pad = kernel_size // 2 if same else 0
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=pad, groups=groups,
                              padding_mode=cast(Literal["reflect", "zeros"], padding_mode) if pad else "zeros")
        self.norm = nn.InstanceNorm2d(cout, affine=True, eps=IN_EPS) if norm else nn.Identity()
        self.act = nn.PReLU(cout) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class GroupedResidualBlock(nn.Module):
    """Split into ``groups`` parts, ``depth`` residual 3x3 ConvActs per part, concat, 1x1 conv, + input.

    Splitting (rather than one grouped conv) lets instance norm sit on every second part only, as in
    the paper ("instance normalization is applied to the outputs of each second channel").  The parts
    are channel slices whose bounds come from the layers' current widths: torch-pruning maps each
    slice's channels by its start/end (its ``torch.split`` mapping depends on graph-traversal order
    and goes wrong here), and a pruned block then slices as pruned.
    """

    def __init__(self, channels: int, groups: int, depth: int, instance_norm: bool, padding_mode: str) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        step = channels // groups
        self.branches = nn.ModuleList(
            nn.ModuleList(ConvAct(step, step, 3, norm=instance_norm and i % 2 == 0,
                                  padding_mode=padding_mode) for _ in range(depth))
            for i in range(groups))
        self.fuse = ConvAct(channels, channels, 1, act=False)

    @property
    def split_sizes(self) -> list[int]:
        """Current group widths (equal as built; pruning may make them differ)."""
        return [branch[0].conv.in_channels for branch in cast("Sequence[Sequence[ConvAct]]", self.branches)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, start = [], 0
        for size, branch in zip(self.split_sizes, cast("Sequence[Sequence[ConvAct]]", self.branches)):
            part = x[:, start:start + size]
            start += size
            for layer in branch:
                # ``part + layer(part)``, not the reverse: torch-pruning sizes the concat's inputs from an
                # add's *last* operand, which must be the conv path (a slice reads as the full input)
                part = part + layer(part)
            outs.append(part)
        return self.fuse(torch.cat(outs, 1)) + x


class SpatialAttention(nn.Module):
    """SAM: 3x3 conv + PReLU, gated per pixel and channel by sigmoid(depthwise 5x5 conv of it)."""

    def __init__(self, channels: int, padding_mode: str) -> None:
        super().__init__()
        self.conv = ConvAct(channels, channels, 3, padding_mode=padding_mode)
        self.gate = ConvAct(channels, channels, 5, act=False, groups=channels, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out * torch.sigmoid(self.gate(out))


class ChannelAttention(nn.Module):
    """CAM: 3x3 conv + PReLU, gated per channel by a global descriptor of it.

    The descriptor shrinks the map 9x per side with two unpadded stride-3 convs (1x1, then 3x3)
    before the global mean, so the block costs little more than one 3x3 conv (paper, Sec. III).
    """

    def __init__(self, channels: int, padding_mode: str) -> None:
        super().__init__()
        self.conv = ConvAct(channels, channels, 3, padding_mode=padding_mode)
        self.reduce1 = ConvAct(channels, channels, 1, stride=3, same=False)
        self.reduce2 = ConvAct(channels, channels, 3, stride=3, same=False)
        self.fc1 = ConvAct(channels, channels, 1)
        self.fc2 = ConvAct(channels, channels, 1, act=False)

    def gate(self, out: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(N, C, 1, 1)`` in (0, 1) for the conv output ``out``."""
        pooled = self.reduce2(self.reduce1(out)).mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(self.fc1(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out * self.gate(out)


class Upsample(nn.Module):
    """x2 bilinear resize (half-pixel, as TF's UpSampling2D) + 3x3 conv + PReLU, ``cin -> cout``.

    ``depthwise=True`` (Slim+): 1x1 conv ``cin -> cout`` at the coarse scale, resize, depthwise 3x3 +
    PReLU (the 1x1 commutes with the resize, so doing it first is exact and 4x cheaper).
    """

    def __init__(self, cin: int, cout: int, depthwise: bool, padding_mode: str) -> None:
        super().__init__()
        self.reduce = ConvAct(cin, cout, 1, act=False) if depthwise else nn.Identity()
        mid = cout if depthwise else cin
        self.conv = ConvAct(mid, cout, 3, groups=cout if depthwise else 1, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(x)


class ResidualPointwise(nn.Module):
    """``x + PReLU(conv1x1(x))``: the released ``_conv_residual_1x1`` after each level's merge."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvAct(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


class Level3(nn.Module):
    """Coarsest level: grouped residual (4 x 2 layers), SAM and CAM, each residual."""

    def __init__(self, channels: int, instance_norm: bool, padding_mode: str) -> None:
        super().__init__()
        self.groups = GroupedResidualBlock(channels, 4, 2, instance_norm, padding_mode)
        self.sam = SpatialAttention(channels, padding_mode)
        self.cam = ChannelAttention(channels, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(x)
        x = self.sam(x) + x
        return self.cam(x) + x


class Level2(nn.Module):
    """Middle level: up(level 3) + conv(skip), 1x1 residual, grouped residual (2 x 3), CAM."""

    def __init__(self, channels: int, instance_norm: bool, depthwise_up: bool, padding_mode: str) -> None:
        super().__init__()
        self.groups = GroupedResidualBlock(channels, 2, 3, instance_norm, padding_mode)  # first (module doc, "Pruning")
        self.up = Upsample(2 * channels, channels, depthwise_up, padding_mode)
        self.skip = ConvAct(channels, channels, 3, padding_mode=padding_mode)
        self.pointwise = ResidualPointwise(channels)
        self.cam = ChannelAttention(channels, padding_mode)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.pointwise(self.skip(skip) + self.up(coarse)))
        return self.cam(x) + x


class Level1(nn.Module):
    """Finest level: up(level 2) + conv(skip), 1x1 residual, grouped residuals (4 x 1) and (2 x 1)."""

    def __init__(self, channels: int, instance_norm: bool, depthwise_up: bool, padding_mode: str) -> None:
        super().__init__()
        # grouped blocks first, quarters before halves (module doc, "Pruning")
        self.groups4 = GroupedResidualBlock(channels, 4, 1, instance_norm, padding_mode)
        self.groups2 = GroupedResidualBlock(channels, 2, 1, instance_norm, padding_mode)
        self.up = Upsample(2 * channels, channels, depthwise_up, padding_mode)
        self.skip = ConvAct(channels, channels, 3, padding_mode=padding_mode)
        self.pointwise = ResidualPointwise(channels)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return self.groups2(self.groups4(self.pointwise(self.skip(skip) + self.up(coarse))))


class Head(nn.Module):
    """1x1 conv to 16, x2 shuffle to 4 maps, PReLU, 3x3 conv to RGB (Slim: to 12 + x2 shuffle), tanh.

    Output ``output_scale * tanh + 0.5``: 0.5 gives (0, 1); the released code uses 0.58.
    """

    def __init__(self, channels: int, slim: bool, output_scale: float, padding_mode: str) -> None:
        super().__init__()
        self.conv = ConvAct(channels, HEAD_MAPS * 4, 1, act=False)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU(HEAD_MAPS)
        self.rgb = ConvAct(HEAD_MAPS, 3 * (4 if slim else 1), 3, act=False, padding_mode=padding_mode)
        self.rgb_shuffle = nn.PixelShuffle(2) if slim else nn.Identity()
        self.output_scale = output_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.rgb(self.act(self.shuffle(self.conv(x))))
        return torch.tanh(self.rgb_shuffle(x)) * self.output_scale + 0.5


class PyNetV2Mobile(nn.Module):
    """Packed RAW ``(N, 4, H, W)`` in [0, 1] -> sRGB ``(N, 3, 2H, 2W)`` in [0, 1] (``output_scale=0.5``).

    ``variant``: ``"full"`` (the paper's model), ``"nonorm"``, ``"slim"``, ``"slim_plus"`` (Table IV).
    ``width`` scales the level-1 channels (32, Slim 64; levels 2 and 3 have 2x and 4x), rounded to a
    multiple of 4 (at least 8) so every grouped block splits evenly into parts of >= 2 channels.
    """

    prune_ignore = ("head.conv.conv", "head.rgb.conv")  # both feed pixel shuffles (the RGB output)
    feature_taps = ("level3", "level2", "level1")  # each level's output feature map, coarse to fine

    def __init__(self, variant: str = "full", width: float = 1.0, output_scale: float = 0.5,
                 padding_mode: str = "reflect", in_channels: int = 4) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"PyNET-V2 Mobile variant must be one of {VARIANTS}; got {variant!r}")
        if not width > 0:
            raise ValueError(f"PyNET-V2 Mobile width must be > 0; got {width}")
        if not output_scale > 0:
            raise ValueError(f"output_scale must be > 0 (0.5: output in (0, 1)); got {output_scale}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}; got {padding_mode!r}")
        self.variant = variant
        self.slim = variant in ("slim", "slim_plus")
        norm, depthwise_up = variant != "nonorm", variant == "slim_plus"
        c1 = level1_channels(width, self.slim)
        self.channels = (c1, 2 * c1, 4 * c1)  # levels 1, 2, 3 as built (pruning does not update it)
        self.input_multiple = 8 if self.slim else 4
        self.min_input = MIN_LEVEL3 * self.input_multiple

        # conv_l1_d1 stays the first conv (tools read the input width from it); each level's grouped
        # blocks come before any other conv writing that level's channels (module order, module doc).
        self.conv_l1_d1 = ConvAct(in_channels, c1, 3, stride=2 if self.slim else 1, padding_mode=padding_mode)
        self.conv_l2_d1 = ConvAct(c1, 2 * c1, 2, stride=2, same=False)
        self.level3 = Level3(4 * c1, norm, padding_mode)
        self.conv_l3_d1 = ConvAct(2 * c1, 4 * c1, 2, stride=2, same=False)
        self.level2 = Level2(2 * c1, norm, depthwise_up, padding_mode)
        self.level1 = Level1(c1, norm, depthwise_up, padding_mode)
        self.head = Head(c1, self.slim, output_scale, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        l1 = self.conv_l1_d1(x)
        l2 = self.conv_l2_d1(l1)
        f3 = self.level3(self.conv_l3_d1(l2))
        f2 = self.level2(l2, f3)
        return self.head(self.level1(l1, f2))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"PyNET-V2 Mobile takes packed RAW (N, 4, H, W); got shape {tuple(x.shape)}")
        if torch.compiler.is_exporting() or torch.compiler.is_compiling():
            return  # int(shape) would pin a traced graph (QAT's torch.export) to the example's H and W
        h, w, m = int(x.shape[-2]), int(x.shape[-1]), self.input_multiple
        if h % m or w % m or h < self.min_input or w < self.min_input:
            raise ValueError(
                f"PyNET-V2 Mobile ({self.variant}) needs packed H and W that are multiples of {m} and at "
                f"least {self.min_input} (level 3 >= {MIN_LEVEL3}x{MIN_LEVEL3} for the CAM's stride-3 convs); "
                f"got {h}x{w}. Crop or pad the packed RAW, e.g. to "
                f"{max(self.min_input, h // m * m)}x{max(self.min_input, w // m * m)}."
            )


_SOURCE = "PyNET-V2 Mobile (seed 000) Sec. III: 3.6 MB fp32 TFLite; params = size / 4 bytes"
_FULL_INFO: dict[str, Any] = dict(tiny_config={"width": 0.25}, input_multiple=4, min_input=28)
_SLIM_INFO: dict[str, Any] = dict(tiny_config={"width": 0.125}, input_multiple=8, min_input=56)


@STUDENTS.register("pynetv2_mobile", ModelInfo(
    **_FULL_INFO, paper={"params": 900_000, "params_tolerance": 0.05, "tflite_fp32_mb": 3.6, "source": _SOURCE}))
def pynetv2_mobile(width: float = 1.0, output_scale: float = 0.5, padding_mode: str = "reflect") -> PyNetV2Mobile:
    """The paper's model: 930,243 parameters at ``width=1.0`` (released code: 930,255, see module doc)."""
    return PyNetV2Mobile("full", width=width, output_scale=output_scale, padding_mode=padding_mode)


@STUDENTS.register("pynetv2_mobile_nonorm", ModelInfo(**_FULL_INFO))
def pynetv2_mobile_nonorm(width: float = 1.0, output_scale: float = 0.5,
                          padding_mode: str = "reflect") -> PyNetV2Mobile:
    """No instance norm (for NPUs that run it slowly): 929,731 parameters at ``width=1.0``."""
    return PyNetV2Mobile("nonorm", width=width, output_scale=output_scale, padding_mode=padding_mode)


@STUDENTS.register("pynetv2_mobile_slim", ModelInfo(**_SLIM_INFO))
def pynetv2_mobile_slim(width: float = 1.0, output_scale: float = 0.5,
                        padding_mode: str = "reflect") -> PyNetV2Mobile:
    """Half-resolution trunk with doubled widths: 3,701,328 parameters at ``width=1.0``."""
    return PyNetV2Mobile("slim", width=width, output_scale=output_scale, padding_mode=padding_mode)


@STUDENTS.register("pynetv2_mobile_slim_plus", ModelInfo(**_SLIM_INFO))
def pynetv2_mobile_slim_plus(width: float = 1.0, output_scale: float = 0.5,
                             padding_mode: str = "reflect") -> PyNetV2Mobile:
    """Slim with 1x1 + bilinear + depthwise 3x3 upsampling blocks: 3,375,568 parameters at ``width=1.0``."""
    return PyNetV2Mobile("slim_plus", width=width, output_scale=output_scale, padding_mode=padding_mode)

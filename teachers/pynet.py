"""PyNET: "Replacing Mobile Camera ISP with a Single Deep Learning Model" (Ignatov et al., CVPRW 2020).

Follows the authors' PyTorch model (aiff22/PyNET-PyTorch, ``model.py``) layer for layer:

* an inverted pyramid on the packed RAW ``(N, 4, H, W)``: level 1 works at ``H x W``, levels 2-5 at
  1/2 ... 1/16 of it after 2x2 max pools, and level 0 is one upsampling conv to ``2H x 2W`` (the
  full RAW / sRGB resolution);
* every feature block is a ``ConvMultiBlock``: parallel 3x3 / 5x5 / 7x7 / 9x9 branches (up to the
  block's ``max_conv_size``), each two reflection-padded convs + LeakyReLU(0.2), concatenated;
* instance norm (affine) in every block of levels 2-5 and in the middle of level 1 (``d5`` ... ``d12``;
  the first and last level-1 blocks and the stem ``conv_l1_d1`` have none).  The released model and
  its training / test scripts build ``PyNET(instance_norm=True, instance_norm_level_1=True)``, so
  both flags default to True here (the class's own default for level 1 is False);
* coarse-to-fine links are x2 bilinear upsampling (``align_corners=True``) + reflection-padded 3x3
  conv + LeakyReLU(0.2), not transposed convs (the PyTorch port's change from the TF model);
* each level ends in a 3x3 conv to RGB and a sigmoid, so every level's output is in [0, 1].

Attribute names are the original's (``conv_l3_d5.conv_7a.conv2d.weight`` ...) so the authors'
released ``pynet_level_0.pth`` loads with ``strict=True`` once DataParallel's ``module.`` prefix is
stripped.

Size at ``width=1.0``: 47,554,738 parameters, the figure of the LW-ISP paper (seed 004, Table 3).
Every conv has a bias and every instance norm an affine (scale, shift) pair.  The count needs
instance norm in the middle of level 1 as released: without it (the class default of the original,
and the TF model) it is 47,551,666 (3,072 = 2 x 1,536 affine parameters fewer); with no instance
norm at all, 47,527,602.

MACs at a 224x224 packed input (448x448 RAW / sRGB), one image, ``forward`` at level 0:
``compress.runtime.profile.count_macs`` (torch-pruning's counter) gives 342.67 G (342,666,354,688); the
convolutions alone are 342.13 G multiply-accumulates.  LW-ISP's Table 3 (seed 004) lists PyNET at
"342.698G FLOPs" for (224, 224): that is the MAC convention, not 2 x MACs (which would be ~685 G).
Their figure is reproduced to the unit by thop's classic rules on the original graph: conv MACs
+ one op per bias + one per LeakyReLU output + 11 per bilinear-upsample output, instance norm not
counted = 342,697,764,668 -- with the original's five discarded coarse-level RGB heads included
(84.2 M MACs, 0.025 %), which ``forward`` here does not run (see ``forward``).  torch-pruning
instead counts instance norm twice and max-pool inputs and upsample outputs once per element.
Their (1440, 1984) entry, 19.513 T, is the same count scaled by pixels, so the table's sizes are
packed-input sizes.  Compare students with PyNET in MACs from one counter.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from teachers.registry import TEACHERS, ModelInfo

LEVELS = (5, 4, 3, 2, 1, 0)
POOLS = 4  # levels 2-5 sit behind four 2x2 max pools of the packed input
MIN_CHANNELS = 4


class ConvLayer(nn.Module):
    """Reflection pad + conv (+ affine instance norm) (+ LeakyReLU(0.2)), the original ``ConvLayer``.

    Reflection padding (not zeros) is the original's choice: borders see image-like values instead of
    black, which matters for a network whose output is the image itself.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, relu: bool = True, instance_norm: bool = False) -> None:
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel_size)
        self.instance = nn.InstanceNorm2d(cout, affine=True) if instance_norm else None
        self.relu = nn.LeakyReLU(0.2) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(self.reflection_pad(x))
        if self.instance is not None:
            out = self.instance(out)
        if self.relu is not None:
            out = self.relu(out)
        return out


class ConvMultiBlock(nn.Module):
    """Parallel k x k branches for k = 3, 5, ..., ``max_conv_size``, concatenated on channels.

    Each branch is two ``ConvLayer``s (``cin -> cout -> cout``), so the block outputs
    ``cout * len(branches)`` channels: the multi-scale receptive field PyNET relies on for local
    (3x3) and wider (up to 9x9 at full packed resolution) corrections at the same time.
    """

    def __init__(self, cin: int, cout: int, max_conv_size: int, instance_norm: bool) -> None:
        super().__init__()
        if max_conv_size not in (3, 5, 7, 9):
            raise ValueError(f"max_conv_size must be 3, 5, 7 or 9; got {max_conv_size}")
        self.max_conv_size = max_conv_size
        self.kernel_sizes = tuple(range(3, max_conv_size + 1, 2))
        for k in self.kernel_sizes:
            setattr(self, f"conv_{k}a", ConvLayer(cin, cout, k, instance_norm=instance_norm))
            setattr(self, f"conv_{k}b", ConvLayer(cout, cout, k, instance_norm=instance_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [getattr(self, f"conv_{k}b")(getattr(self, f"conv_{k}a")(x)) for k in self.kernel_sizes]
        return branches[0] if len(branches) == 1 else torch.cat(branches, 1)


class UpsampleConvLayer(nn.Module):
    """x2 bilinear upsample (``align_corners=True``) + reflection-padded 3x3 conv + LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel_size)
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2d(self.reflection_pad(self.upsample(x))))


def scaled_channels(base: int, width: float) -> int:
    """``base * width`` rounded half up, at least ``MIN_CHANNELS``."""
    return max(MIN_CHANNELS, int(base * width + 0.5))


class PyNET(nn.Module):
    """Packed RAW ``(N, 4, H, W)`` in [0, 1] -> sRGB of level ``level``: ``(N, 3, 2H / 2^level, 2W / 2^level)``.

    ``H`` and ``W`` must be multiples of 16 (four 2x2 pools) and at least 32 (level 5's map must be at
    least 2x2 for its reflection padding).  ``forward`` returns one level's output (``level`` argument,
    else the ``level`` attribute, 0 = full resolution); ``forward_levels`` returns all computed
    levels, coarsest first, for level-wise training.  ``feature_taps`` names, per level, the submodule
    whose output is that level's feature map (the input of its RGB head and of its upsampling links),
    for forward hooks in feature distillation.

    ``width`` scales the original per-level widths 32 / 64 / 128 / 256 / 512 (levels 1-5) and 16
    (level 0); every concat / residual is built from those, so any width is consistent.
    """

    # the convs whose 3 output channels are RGB images (one head per level)
    prune_ignore = (
        "conv_l5_out.conv2d", "conv_l4_out.conv2d", "conv_l3_out.conv2d",
        "conv_l2_out.conv2d", "conv_l1_out.conv2d", "conv_l0_d1.conv2d",
    )
    feature_taps = {5: "conv_l5_d4", 4: "conv_l4_d8", 3: "conv_l3_d8", 2: "conv_l2_d12", 1: "conv_l1_d14", 0: "conv_t0"}
    output_heads = {5: "conv_l5_out", 4: "conv_l4_out", 3: "conv_l3_out", 2: "conv_l2_out", 1: "conv_l1_out",
                    0: "conv_l0_d1"}

    def __init__(
        self,
        level: int = 0,
        width: float = 1.0,
        instance_norm: bool = True,
        instance_norm_level_1: bool = True,
        in_channels: int = 4,
    ) -> None:
        super().__init__()
        self.level = _check_level(level)
        if not width > 0:
            raise ValueError(f"PyNET width must be > 0; got {width}")
        self.width = width
        c1, c2, c3, c4, c5 = (scaled_channels(32 * 2**i, width) for i in range(5))
        c0 = scaled_channels(16, width)
        norm, norm1 = instance_norm, instance_norm_level_1
        self.channels = {0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5}  # as built (pruning does not update it)

        # Downsampling path (first block of each level)
        self.conv_l1_d1 = ConvMultiBlock(in_channels, c1, 3, instance_norm=False)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv_l2_d1 = ConvMultiBlock(c1, c2, 3, instance_norm=norm)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv_l3_d1 = ConvMultiBlock(c2, c3, 3, instance_norm=norm)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.conv_l4_d1 = ConvMultiBlock(c3, c4, 3, instance_norm=norm)
        self.pool4 = nn.MaxPool2d(2, 2)

        # Level 5 (1/16): four 3x3 blocks
        self.conv_l5_d1 = ConvMultiBlock(c4, c5, 3, instance_norm=norm)
        self.conv_l5_d2 = ConvMultiBlock(c5, c5, 3, instance_norm=norm)
        self.conv_l5_d3 = ConvMultiBlock(c5, c5, 3, instance_norm=norm)
        self.conv_l5_d4 = ConvMultiBlock(c5, c5, 3, instance_norm=norm)
        self.conv_t4a = UpsampleConvLayer(c5, c4)
        self.conv_t4b = UpsampleConvLayer(c5, c4)
        self.conv_l5_out = ConvLayer(c5, 3, 3, relu=False)

        # Level 4 (1/8): 3x3 blocks, two residual
        self.conv_l4_d3 = ConvMultiBlock(2 * c4, c4, 3, instance_norm=norm)
        self.conv_l4_d4 = ConvMultiBlock(c4, c4, 3, instance_norm=norm)
        self.conv_l4_d5 = ConvMultiBlock(c4, c4, 3, instance_norm=norm)
        self.conv_l4_d6 = ConvMultiBlock(c4, c4, 3, instance_norm=norm)
        self.conv_l4_d8 = ConvMultiBlock(2 * c4, c4, 3, instance_norm=norm)
        self.conv_t3a = UpsampleConvLayer(c4, c3)
        self.conv_t3b = UpsampleConvLayer(c4, c3)
        self.conv_l4_out = ConvLayer(c4, 3, 3, relu=False)

        # Level 3 (1/4): 3+5 blocks (2 * c3 channels out), three residual
        self.conv_l3_d3 = ConvMultiBlock(2 * c3, c3, 5, instance_norm=norm)
        self.conv_l3_d4 = ConvMultiBlock(2 * c3, c3, 5, instance_norm=norm)
        self.conv_l3_d5 = ConvMultiBlock(2 * c3, c3, 5, instance_norm=norm)
        self.conv_l3_d6 = ConvMultiBlock(2 * c3, c3, 5, instance_norm=norm)
        self.conv_l3_d8 = ConvMultiBlock(4 * c3, c3, 3, instance_norm=norm)
        self.conv_t2a = UpsampleConvLayer(c3, c2)
        self.conv_t2b = UpsampleConvLayer(c3, c2)
        self.conv_l3_out = ConvLayer(c3, 3, 3, relu=False)

        # Level 2 (1/2): up to 7x7 blocks
        self.conv_l2_d3 = ConvMultiBlock(2 * c2, c2, 5, instance_norm=norm)
        self.conv_l2_d5 = ConvMultiBlock(3 * c2, c2, 7, instance_norm=norm)
        self.conv_l2_d6 = ConvMultiBlock(3 * c2, c2, 7, instance_norm=norm)
        self.conv_l2_d7 = ConvMultiBlock(3 * c2, c2, 7, instance_norm=norm)
        self.conv_l2_d8 = ConvMultiBlock(3 * c2, c2, 7, instance_norm=norm)
        self.conv_l2_d10 = ConvMultiBlock(4 * c2, c2, 5, instance_norm=norm)
        self.conv_l2_d12 = ConvMultiBlock(3 * c2, c2, 3, instance_norm=norm)
        self.conv_t1a = UpsampleConvLayer(c2, c1)
        self.conv_t1b = UpsampleConvLayer(c2, c1)
        self.conv_l2_out = ConvLayer(c2, 3, 3, relu=False)

        # Level 1 (packed resolution): up to 9x9 blocks; norm only in the middle (d5 ... d12)
        self.conv_l1_d3 = ConvMultiBlock(2 * c1, c1, 5, instance_norm=False)
        self.conv_l1_d5 = ConvMultiBlock(3 * c1, c1, 7, instance_norm=norm1)
        self.conv_l1_d6 = ConvMultiBlock(3 * c1, c1, 9, instance_norm=norm1)
        self.conv_l1_d7 = ConvMultiBlock(4 * c1, c1, 9, instance_norm=norm1)
        self.conv_l1_d8 = ConvMultiBlock(4 * c1, c1, 9, instance_norm=norm1)
        self.conv_l1_d9 = ConvMultiBlock(4 * c1, c1, 9, instance_norm=norm1)
        self.conv_l1_d10 = ConvMultiBlock(4 * c1, c1, 7, instance_norm=norm1)
        self.conv_l1_d12 = ConvMultiBlock(4 * c1, c1, 5, instance_norm=norm1)
        self.conv_l1_d14 = ConvMultiBlock(4 * c1, c1, 3, instance_norm=False)
        self.conv_l1_out = ConvLayer(c1, 3, 3, relu=False)
        self.conv_t0 = UpsampleConvLayer(c1, c0)

        # Level 0 (full RAW resolution, 2x packed): one conv to RGB
        self.conv_l0_d1 = ConvLayer(c0, 3, 3, relu=False)

    # ----------------------------------------------------------------------------------------------
    # One method per level, as in the original: each takes the skip from the downsampling path and
    # the two upsampled links from the level below, and returns its feature map.

    def _level_5(self, pool4: torch.Tensor) -> torch.Tensor:
        d1 = self.conv_l5_d1(pool4)
        return self.conv_l5_d4(self.conv_l5_d3(self.conv_l5_d2(d1)))

    def _level_4(self, l4_d1: torch.Tensor, t4a: torch.Tensor, t4b: torch.Tensor) -> torch.Tensor:
        d3 = self.conv_l4_d3(torch.cat([l4_d1, t4a], 1))
        d4 = self.conv_l4_d4(d3) + d3
        d5 = self.conv_l4_d5(d4) + d4
        d6 = self.conv_l4_d6(d5)
        return self.conv_l4_d8(torch.cat([d6, t4b], 1))

    def _level_3(self, l3_d1: torch.Tensor, t3a: torch.Tensor, t3b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cat([l3_d1, t3a], 1)
        d3 = self.conv_l3_d3(d2) + d2
        d4 = self.conv_l3_d4(d3) + d3
        d5 = self.conv_l3_d5(d4) + d4
        d6 = self.conv_l3_d6(d5)
        return self.conv_l3_d8(torch.cat([d6, l3_d1, t3b], 1))

    def _level_2(self, l2_d1: torch.Tensor, t2a: torch.Tensor, t2b: torch.Tensor) -> torch.Tensor:
        d3 = self.conv_l2_d3(torch.cat([l2_d1, t2a], 1))
        d4 = torch.cat([d3, l2_d1], 1)
        d5 = self.conv_l2_d5(d4) + d4
        d6 = self.conv_l2_d6(d5) + d5
        d7 = self.conv_l2_d7(d6) + d6
        d8 = self.conv_l2_d8(d7)
        d10 = self.conv_l2_d10(torch.cat([d8, l2_d1], 1))
        return self.conv_l2_d12(torch.cat([d10, t2b], 1))

    def _level_1(self, l1_d1: torch.Tensor, t1a: torch.Tensor, t1b: torch.Tensor) -> torch.Tensor:
        d3 = self.conv_l1_d3(torch.cat([l1_d1, t1a], 1))
        d5 = self.conv_l1_d5(torch.cat([d3, l1_d1], 1))
        d6 = self.conv_l1_d6(d5)
        d7 = self.conv_l1_d7(d6) + d6
        d8 = self.conv_l1_d8(d7) + d7
        d9 = self.conv_l1_d9(d8) + d8
        d10 = self.conv_l1_d10(d9)
        d12 = self.conv_l1_d12(torch.cat([d10, l1_d1], 1))
        return self.conv_l1_d14(torch.cat([d12, t1b, l1_d1], 1))

    # ----------------------------------------------------------------------------------------------

    def forward_levels(self, x: torch.Tensor, up_to_level: int | None = None) -> dict[int, torch.Tensor]:
        """RGB outputs ``{5: ..., 4: ..., ..., up_to_level: ...}`` (sigmoid, in [0, 1]).

        Levels finer than ``up_to_level`` (default: the ``level`` attribute) are not computed, as in
        the original, where they are not trained yet.  Level ``k`` is ``(N, 3, 2H / 2^k, 2W / 2^k)``.
        """
        level = self.level if up_to_level is None else _check_level(up_to_level)
        return self._pyramid(x, level, heads=range(level, 6))

    def forward(self, x: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """The RGB output of ``level`` (default: the ``level`` attribute; 0 = ``(N, 3, 2H, 2W)``).

        Only that level's RGB head runs.  The original also evaluates the heads of the coarser levels
        and throws them away; skipping them gives identical outputs, keeps exported graphs free of dead
        branches and keeps torch-pruning's traced graph equal to the computed one (a head computed but
        outside the traced output would keep its unpruned input width and break the forward).
        """
        level = self.level if level is None else _check_level(level)
        return self._pyramid(x, level, heads=(level,))[level]

    def _pyramid(self, x: torch.Tensor, level: int, heads: Iterable[int]) -> dict[int, torch.Tensor]:
        """Features from level 5 down to ``level``; RGB outputs (sigmoid) of the levels in ``heads``."""
        _check_input(x)
        heads = set(heads)
        outputs: dict[int, torch.Tensor] = {}

        def emit(k: int, feature: torch.Tensor) -> None:
            if k in heads:
                outputs[k] = torch.sigmoid(getattr(self, self.output_heads[k])(feature))

        l1_d1 = self.conv_l1_d1(x)
        l2_d1 = self.conv_l2_d1(self.pool1(l1_d1))
        l3_d1 = self.conv_l3_d1(self.pool2(l2_d1))
        l4_d1 = self.conv_l4_d1(self.pool3(l3_d1))
        f5 = self._level_5(self.pool4(l4_d1))
        emit(5, f5)
        if level < 5:
            f4 = self._level_4(l4_d1, self.conv_t4a(f5), self.conv_t4b(f5))
            emit(4, f4)
        if level < 4:
            f3 = self._level_3(l3_d1, self.conv_t3a(f4), self.conv_t3b(f4))
            emit(3, f3)
        if level < 3:
            f2 = self._level_2(l2_d1, self.conv_t2a(f3), self.conv_t2b(f3))
            emit(2, f2)
        if level < 2:
            f1 = self._level_1(l1_d1, self.conv_t1a(f2), self.conv_t1b(f2))
            emit(1, f1)
        if level < 1:
            # the original also runs conv_t0 when training level 1, where it feeds nothing
            emit(0, self.conv_t0(f1))
        return outputs

    def feature_module(self, level: int) -> nn.Module:
        """The submodule whose output is level ``level``'s feature map (hook it to tap features)."""
        return self.get_submodule(self.feature_taps[_check_level(level)])


def _check_level(level: int) -> int:
    if level not in LEVELS:
        raise ValueError(f"PyNET level must be one of 0..5 (5 coarsest, 0 full resolution); got {level!r}")
    return int(level)


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"PyNET takes packed RAW (N, 4, H, W); got shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    step = 2**POOLS
    if h % step or w % step or h < 2 * step or w < 2 * step:
        raise ValueError(
            f"PyNET needs packed H and W that are multiples of {step} (four 2x2 max pools) and at least "
            f"{2 * step} (level 5's map must be >= 2x2 for reflection padding); got {h}x{w}. "
            f"Crop or pad the packed RAW, e.g. to {max(2 * step, h // step * step)}x{max(2 * step, w // step * step)}."
        )


@TEACHERS.register("pynet", ModelInfo(
    tiny_config={"width": 0.125}, input_multiple=16, min_input=32,
    paper={"params": 47_554_738, "gmacs_224": 342.698, "source": "LW-ISP paper (seed 004) Table 3"}))
def pynet(
    level: int = 0, width: float = 1.0, instance_norm: bool = True, instance_norm_level_1: bool = True
) -> PyNET:
    """PyNET as released (IN in levels 2-5 and mid level 1); ``width=1.0`` has 47,554,738 parameters."""
    return PyNET(level=level, width=width, instance_norm=instance_norm, instance_norm_level_1=instance_norm_level_1)

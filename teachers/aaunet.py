"""AA-UNet: the attention-aware U-Net teacher of team CASIA 1st, MAI & AIM 2022 learned ISP (seed 002, Sec. 4.6).

The report says only this much about the teacher: it is PUNET (the MAI 2021 baseline, ``teachers.punet``)
developed into an "attention-aware" U-Net with a self-attention module, trained with a multi-loss
constraint on outputs at several model levels (inspired by PyNET): MSE on levels 2, 3 and 4, SSIM on
levels 2 and 3, and MSE + SSIM + VGG + edge loss on level 1.  The student later replaces every
self-attention module with a same-shaped attention-inception block and learns the teacher's per-level
feature maps as soft labels, so those features are exposed here by module path.

So this model *is* PUNET (subclassed: same layers, same names, a PUNET ``state_dict`` loads into it) plus

* one SAGAN-style self-attention block on the bottleneck output (``attention``), whose residual scale
  ``gamma`` starts at 0: a fresh AA-UNet computes exactly what PUNET computes, and attention is
  blended in as training finds it useful;
* one small RGB head per decoder level (``head1`` .. ``head4``: 3x3 conv + PUNET's
  ``tanh(x) * 0.58 + 0.5``) for the multi-level loss.  They run only in ``forward_levels``: ``forward``
  (what is exported) is the plain final image.

Level numbering (PyNET's code convention, which PUNET's reference code also uses: ``output_l0`` is the
final image), for a packed input of ``H x W`` (divisible by 16) and the full-resolution target
``2H x 2W``:

======  ===============  ====================  ===================================
level   module -> head   size                  target downscale from ``2H x 2W``
======  ===============  ====================  ===================================
0       ``head``         ``2H x 2W``           1 (the exported output)
1       ``dec1 -> head1``  ``H x W``           2 (the finest U-Net level)
2       ``dec2 -> head2``  ``H/2 x W/2``       4
3       ``dec3 -> head3``  ``H/4 x W/4``       8
4       ``dec4 -> head4``  ``H/8 x W/8``       16
======  ===============  ====================  ===================================

The bottleneck (and the attention on it) is at ``H/16 x W/16``; the attention matrix is
``(HW/256)^2`` per image (a 1088x1920 RGB output -> 2040 positions -> 16 MB in float32).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from teachers.punet import PUNET
from teachers.registry import TEACHERS, ModelInfo

LEVELS = (0, 1, 2, 3, 4)
"""Keys of ``AAUNet.forward_levels``: 0 is the final image, 1..4 the decoder levels (report numbering)."""

FEATURE_MODULES = ("attention", "dec4", "dec3", "dec2", "dec1")
"""Module paths (coarse to fine) whose outputs ``AAUNet.level_features`` returns, for feature distillation."""

SSIM_WINDOW = 11  # torchmetrics' Gaussian window (sigma 1.5), as in the MAI evaluation code


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    """PUNET's output activation: bounds the image to [-0.08, 1.08] like the reference models."""
    return torch.tanh(x) * 0.58 + 0.5


class SelfAttention2d(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): ``x + gamma * attend(x)`` over all spatial positions.

    1x1 convs give queries and keys with ``channels // reduction`` channels and values with all
    ``channels``; each position's output is the softmax(q . k)-weighted sum of every position's value.
    The logits are not scaled by ``1/sqrt(d)`` (as in SAGAN; a scale would be absorbed by ``query``).
    ``gamma`` is a learned scalar that starts at 0, so the block is the identity until trained.

    Export-friendly: 1x1 convs, reshapes, two batched ``MatMul``s, a last-axis ``Softmax`` and
    transposes of the small ``(N, HW, C)`` tensors only (never of the ``HW x HW`` matrix); no einsum.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"attention reduction must be >= 1; got {reduction}")
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).reshape(n, -1, h * w).transpose(1, 2)  # (N, HW, C')
        k = self.key(x).reshape(n, -1, h * w)  # (N, C', HW)
        attn = torch.softmax(torch.matmul(q, k), dim=-1)  # (N, HW_query, HW_key), rows sum to 1
        v = self.value(x).reshape(n, c, h * w).transpose(1, 2)  # (N, HW, C)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(n, c, h, w)
        return x + self.gamma * out

    # Channel-coupled pruning (``compress.pruning.rules``): the block is pruned as one unit, its input
    # and output channels together (the residual ties them); query/key keep their inner width.
    @property
    def coupled_channels(self) -> int:
        return self.value.out_channels

    def remove_channels(self, idxs: list[int]) -> None:
        """Drop input/output channels ``idxs`` (the same channels of ``x`` and of the result)."""
        keep = torch.tensor([i for i in range(self.coupled_channels) if i not in set(idxs)], dtype=torch.long)
        for conv in (self.query, self.key, self.value):
            conv.weight = nn.Parameter(conv.weight.data.index_select(1, keep).contiguous())
            conv.in_channels = len(keep)
        self.value.weight = nn.Parameter(self.value.weight.data.index_select(0, keep).contiguous())
        assert self.value.bias is not None  # built with a bias
        self.value.bias = nn.Parameter(self.value.bias.data.index_select(0, keep).contiguous())
        self.value.out_channels = len(keep)


class AAUNet(PUNET):
    """Packed RAW ``(N, 4, H, W)`` in [0, 1] -> sRGB ``(N, 3, 2H, 2W)``; H and W divisible by 16.

    ``forward`` returns the final image only; ``forward_levels`` adds the per-level RGB images
    (see the module docstring for the numbering) and ``level_features`` the per-level feature maps.
    """

    # The RGB heads: their 3 output channels are the images.  The attention block prunes as one unit
    # (``SelfAttention2d.remove_channels``), in step with the bottleneck it wraps.
    prune_ignore: tuple[str, ...] = ("head", "head1", "head2", "head3", "head4")
    feature_taps: tuple[str, ...] = FEATURE_MODULES  # the per-level soft labels of CASIA's student

    def __init__(self, base_width: int = 16, instance_norm: bool = False, in_channels: int = 4,
                 attention_reduction: int = 8) -> None:
        super().__init__(base_width=base_width, instance_norm=instance_norm, in_channels=in_channels)
        w = base_width
        self.attention: nn.Module = SelfAttention2d(16 * w, reduction=attention_reduction)  # a student swaps it
        self.head1 = nn.Conv2d(w, 3, 3, padding=1)
        self.head2 = nn.Conv2d(2 * w, 3, 3, padding=1)
        self.head3 = nn.Conv2d(4 * w, 3, 3, padding=1)
        self.head4 = nn.Conv2d(8 * w, 3, 3, padding=1)

    def level_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs of ``FEATURE_MODULES`` (bottleneck after attention, then ``dec4`` .. ``dec1``).

        Keys are module paths, so a student (or a forward hook) can name the same tensors; shapes for
        base width ``w``: ``attention`` (16w, H/16), ``dec4`` (8w, H/8), ``dec3`` (4w, H/4),
        ``dec2`` (2w, H/2), ``dec1`` (w, H).
        """
        b, d4, d3, d2, d1 = self.unet_features(x)  # PUNET's U-Net, attention after the bottleneck
        return {"attention": b, "dec4": d4, "dec3": d3, "dec2": d2, "dec1": d1}

    def _bottleneck_out(self, b3: torch.Tensor) -> torch.Tensor:
        return self.attention(super()._bottleneck_out(b3))

    def _final(self, d1: torch.Tensor) -> torch.Tensor:
        return _to_rgb(self.head(self.up0(d1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._final(self.level_features(x)["dec1"])

    def forward_levels(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """RGB image per level: ``{0: (2H, 2W) final, 1: (H, W), 2: (H/2), 3: (H/4), 4: (H/8)}``."""
        f = self.level_features(x)
        return {
            0: self._final(f["dec1"]),
            1: _to_rgb(self.head1(f["dec1"])),
            2: _to_rgb(self.head2(f["dec2"])),
            3: _to_rgb(self.head3(f["dec3"])),
            4: _to_rgb(self.head4(f["dec4"])),
        }


@TEACHERS.register("aaunet", ModelInfo(tiny_config={"base_width": 4}, input_multiple=16, min_input=16))
def aaunet(base_width: int = 16, instance_norm: bool = False, attention_reduction: int = 8) -> AAUNet:
    return AAUNet(base_width=base_width, instance_norm=instance_norm, attention_reduction=attention_reduction)


# --- multi-level loss --------------------------------------------------------------------------------

AAUNET_LOSS_WEIGHTS: dict[str, float] = {
    "l0_mse": 1.0, "l0_ssim": 0.4,
    "l1_mse": 1.0, "l1_ssim": 0.4,
    "l2_mse": 1.0, "l2_ssim": 0.4,
    "l3_mse": 1.0, "l3_ssim": 0.4,
    "l4_mse": 1.0,
}
"""The report's terms (MSE on 2-4, SSIM on 2-3, MSE + SSIM on 1) plus the same MSE + SSIM on level 0.

Level 0, the final image, is supervised too: it is what ships, and ``up0``/``head`` get no gradient
from any other level.  (In PyNET's numbering, which the team cite, the richest loss is on the final
image; whichever of level 0/1 the report's "level 1" meant, both get it here.)  The report gives no
weights: MSE 1.0 and SSIM 0.4 are PyNET-PyTorch's final-level proportions (``mse + 0.4 * (1 - ms_ssim)``),
used on every level as all levels are trained jointly.  The report's VGG and edge terms on level 1
are not built in (VGG weights are a download; the edge loss is not specified): add them to the
total for ``outputs[0]`` / ``outputs[1]`` if wanted.
"""

_TERMS = {"mse", "ssim"}


def downsample_target(target: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``target`` resized to ``size``: box-filter average (area) for integer factors, else antialiased bilinear."""
    h, w = target.shape[-2:]
    if (h, w) == tuple(size):
        return target
    if h % size[0] == 0 and w % size[1] == 0 and h // size[0] == w // size[1]:
        return F.avg_pool2d(target, h // size[0])
    return F.interpolate(target, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def parse_loss_term(name: str) -> tuple[int, str]:
    level, _, kind = name.partition("_")
    if not (level[:1] == "l" and level[1:].isdigit() and kind in _TERMS):
        raise KeyError(f"unknown AA-UNet loss term {name!r}; terms are l<level>_<{'|'.join(sorted(_TERMS))}>, "
                       f"e.g. {', '.join(AAUNET_LOSS_WEIGHTS)}")
    return int(level[1:]), kind


def aaunet_multilevel_loss(
    outputs: Mapping[int, torch.Tensor],
    target: torch.Tensor,
    weights: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted multi-level loss of ``AAUNet.forward_levels`` outputs against the full-resolution target.

    ``weights`` maps term names ``l<level>_mse`` / ``l<level>_ssim`` to weights (default
    ``AAUNET_LOSS_WEIGHTS``); terms weighted 0 are not computed.  The target is downsampled to each
    level's size (``downsample_target``).  SSIM is ``1 - SSIM`` (11x11 Gaussian window, data range 1);
    on a level smaller than the window it is skipped and left out of the returned parts.

    Returns the total and each computed term's unweighted value (``{"l2_mse": ..., "l1_ssim": ...}``).
    """
    weights = AAUNET_LOSS_WEIGHTS if weights is None else weights
    total = target.new_zeros(())
    parts: dict[str, float] = {}
    targets: dict[int, torch.Tensor] = {}
    for name, weight in weights.items():
        level, kind = parse_loss_term(name)
        if weight == 0:
            continue
        if level not in outputs:
            raise KeyError(f"loss term {name!r} needs level {level}; outputs have levels {sorted(outputs)}")
        pred = outputs[level]
        if level not in targets:
            targets[level] = downsample_target(target, pred.shape[-2:])
        ref = targets[level]
        if kind == "mse":
            value = F.mse_loss(pred, ref)
        else:
            if min(pred.shape[-2:]) < SSIM_WINDOW:
                continue
            value = 1.0 - cast(torch.Tensor, structural_similarity_index_measure(pred, ref, data_range=1.0))
        parts[name] = float(value.detach())
        total = total + float(weight) * value
    return total, parts

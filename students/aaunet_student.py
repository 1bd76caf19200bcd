"""AA-UNet student of team CASIA 1st (MAI & AIM 2022 report, seed 002, Sec. 4.6).

The report: "The student network is very similar to the teacher model. [...] the authors connected
three attention modules (CBAM, ECA, and SEA) in parallel to form the attention inception module that
was used to replace all self-attention modules in the TN to reduce the time complexity.  Since the
self-attention and attention inception modules have the same input/output shapes, [...] the feature
maps from each level in the TN model were extracted and used as soft-labels to train SN."

So the student is ``teachers.aaunet.AAUNet`` with its one self-attention block (on the bottleneck)
swapped for ``AttentionInception``; every other layer, name and level shape is the teacher's, so the
teacher's ``level_features`` (``attention``, ``dec4`` .. ``dec1``) are soft labels for the same module
paths here (``feature_taps``).  Choices the report leaves open:

* the three branches are timm's ``CbamModule``, ``EcaModule`` and ``SEModule`` with timm's default
  reductions ("SEA" read as squeeze-excitation attention); each re-weights the input;
* "in parallel ... inception": the three re-weighted maps are concatenated and a 1x1 conv fuses them
  back to the input width, added to the input (a residual, like the teacher's ``x + gamma * attn``).
  The fusion starts at zero, so a fresh student's attention is the identity, as the teacher's is;
* no per-level RGB heads: the student's levels are supervised by the teacher's feature maps, and its
  image losses apply to the final output;
* widths: the teacher's (``base_width``), which the level-wise soft labels need; "relatively tiny"
  then comes from the cheaper attention (linear in the number of positions, not quadratic) and from a
  smaller ``base_width`` when the teacher is built smaller too.
"""
from __future__ import annotations

import torch
from timm.layers import EcaModule, SEModule
from timm.layers.cbam import CbamModule
from torch import nn

from students.reparam import fold_conv_bn_pair
from teachers.aaunet import AAUNet
from teachers.registry import STUDENTS, ModelInfo


class AttentionInception(nn.Module):
    """CBAM, ECA and SE in parallel on the same input; concatenated, fused by a 1x1 conv, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cbam = CbamModule(channels)
        self.eca = EcaModule(channels)
        self.se = SEModule(channels)
        self.fuse = nn.Conv2d(3 * channels, channels, 1)
        nn.init.zeros_(self.fuse.weight)
        assert self.fuse.bias is not None  # built with a bias
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fuse(torch.cat([self.cbam(x), self.eca(x), self.se(x)], dim=1))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold CBAM's spatial conv + BatchNorm (timm's ``ConvNormAct``, not a Sequential) for export."""
        block = self.cbam.spatial.conv
        if isinstance(block.bn, nn.BatchNorm2d):
            block.conv, block.bn = fold_conv_bn_pair(block.conv, block.bn)

    # Channel-coupled pruning (``compress.pruning.rules``): torch-pruning cannot follow ECA's conv across
    # the channel axis, so the block prunes itself, its input and output channels together.
    @property
    def coupled_channels(self) -> int:
        return self.fuse.out_channels

    @torch.no_grad()
    def remove_channels(self, idxs: list[int]) -> None:
        """Drop input/output channels ``idxs`` from every branch and from the fusion conv."""
        channels = self.coupled_channels
        keep = torch.tensor([i for i in range(channels) if i not in set(idxs)], dtype=torch.long)
        for squeeze, excite in ((self.cbam.channel.fc1, self.cbam.channel.fc2), (self.se.fc1, self.se.fc2)):
            _select(squeeze, keep, dim=1)
            _select(excite, keep, dim=0)
        _select(self.fuse, torch.cat([keep, keep + channels, keep + 2 * channels]), dim=1)
        _select(self.fuse, keep, dim=0)


def _select(conv: nn.Conv2d, index: torch.Tensor, dim: int) -> None:
    """Keep ``index`` along ``conv``'s output (dim 0) or input (dim 1) channels."""
    conv.weight = nn.Parameter(conv.weight.data.index_select(dim, index).contiguous())
    if dim == 0:
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data.index_select(0, index).contiguous())
        conv.out_channels = len(index)
    else:
        conv.in_channels = len(index)


class AAUNetStudent(AAUNet):
    """AA-UNet with ``AttentionInception`` in place of self-attention: same levels, taps and shapes."""

    feature_taps = ("attention", "dec4", "dec3", "dec2", "dec1")
    prune_ignore = ("head",)

    def __init__(self, base_width: int = 16, instance_norm: bool = False) -> None:
        super().__init__(base_width=base_width, instance_norm=instance_norm)
        self.attention = AttentionInception(16 * base_width)
        # The student learns its levels from the teacher's *features* (soft labels), not from per-level
        # RGB images, so the teacher's level heads would be dead weight in the shipped model.
        for name in ("head1", "head2", "head3", "head4"):
            delattr(self, name)

    def forward_levels(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Only the final image (level 0): the student has no per-level RGB heads."""
        return {0: self(x)}


@STUDENTS.register("aaunet_student", ModelInfo(tiny_config={"base_width": 4}, input_multiple=16, min_input=16))
def aaunet_student(base_width: int = 16, instance_norm: bool = False) -> AAUNetStudent:
    return AAUNetStudent(base_width=base_width, instance_norm=instance_norm)

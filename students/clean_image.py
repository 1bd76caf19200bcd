"""Clean-image teachers (LW-ISP paper, seed 004, Sec. 3.3 and 3.5).

A clean-image teacher g learns the identity-like mapping g(J) -> J on the clean target RGB J with
``(g(J) - J)^2 + gamma * (1 - MS-SSIM)``.  Its body is the body of the student it will supervise, minus
the upsampling block (J is already at full resolution), so its intermediate features live in the same
space as the student's and can be matched layer by layer (heterogeneous distillation: the teacher
sees J, the student sees RAW).  Train one with ``clean_image: true`` in the teacher stage.
"""
from __future__ import annotations

from torch import nn

from students.lwisp import LWISP
from students.smallnet import Smallnet
from teachers.registry import TEACHERS, ModelInfo


@TEACHERS.register("smallnet_clean", ModelInfo(tiny_config={"width": 8}, in_channels=3, upscale=1))
def smallnet_clean(width: int = 16, batch_norm: bool = False) -> nn.Module:
    """Smallnet's three convs on 3-channel RGB, no pixel shuffle: (N, 3, H, W) -> (N, 3, H, W)."""
    return Smallnet(width=width, in_channels=3, out_channels=3, scale=1, batch_norm=batch_norm)


@TEACHERS.register("lwisp_clean", ModelInfo(tiny_config={"width": 0.25}, in_channels=3, upscale=1,
                                            input_multiple=16, min_input=16))
def lwisp_clean(width: float = 1.0, fgam: bool = True) -> nn.Module:
    """LW-ISP's body on 3-channel RGB without the last up-block: (N, 3, H, W) -> (N, 3, H, W).

    The paper's clean-image teacher for LW-ISP (Sec. 3.5): its ``up1``..``up3`` features line up with
    the student's for the heterogeneous distillation loss.
    """
    return LWISP(width=width, fgam=fgam, in_channels=3, scale=1)

"""Adapters that bring a student feature to the shape of the teacher feature it is matched with.

A channel mismatch gets a learned 1x1 convolution (FitNets' regressor), a spatial mismatch a bilinear
resize; both are linear and commute, so the 1x1 conv runs at the smaller of the two resolutions.  The
adapters train with the student and are never part of it: the saved and exported student has none.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class AdapterError(ValueError):
    """Two tapped features cannot be matched by a 1x1 conv and a resize."""


@dataclass(frozen=True)
class FeaturePair:
    """One feature-distillation term: ``weight * loss(adapter(student[student_path]), teacher[teacher_path])``."""

    student: str
    teacher: str
    loss: str = "mse"
    weight: float = 1.0

    @property
    def key(self) -> str:
        """A name for logs and the adapter dict (module paths without dots)."""
        return f"{self.student}__{self.teacher}".replace(".", "_")


class FeatureAdapter(nn.Module):
    """``student (N, Cs, Hs, Ws) -> (N, Ct, Ht, Wt)``: 1x1 conv if Cs != Ct, bilinear resize if sizes differ."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.proj: nn.Module = (nn.Conv2d(student_channels, teacher_channels, 1)
                                if student_channels != teacher_channels else nn.Identity())

    @property
    def is_identity(self) -> bool:
        return isinstance(self.proj, nn.Identity)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        size = tuple(int(s) for s in size)
        if tuple(x.shape[-2:]) == size:
            return self.proj(x)
        if x.shape[-2] * x.shape[-1] > size[0] * size[1]:  # shrink first: the 1x1 conv sees fewer pixels
            return self.proj(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return F.interpolate(self.proj(x), size=size, mode="bilinear", align_corners=False)


def check_pair(pair: FeaturePair, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Fail before training if two features cannot be matched; the message lists both paths and shapes."""
    where = (f"student {pair.student!r} {tuple(student.shape)} vs teacher {pair.teacher!r} "
             f"{tuple(teacher.shape)}")
    if student.dim() != 4 or teacher.dim() != 4:
        raise AdapterError(f"feature pair {where}: both must be (N, C, H, W) feature maps")
    if student.shape[0] != teacher.shape[0]:
        raise AdapterError(f"feature pair {where}: batch sizes differ")
    (hs, ws), (ht, wt) = student.shape[-2:], teacher.shape[-2:]
    if hs * wt != ws * ht:
        raise AdapterError(f"feature pair {where}: aspect ratios differ, so no resize maps one onto the "
                           "other; pair features that cover the same image area")


def build_adapters(pairs: Sequence[FeaturePair], student_feats: Mapping[str, torch.Tensor],
                   teacher_feats: Mapping[str, torch.Tensor]) -> nn.ModuleDict:
    """Check every pair's shapes and make its adapter (identity when the shapes already match)."""
    adapters = nn.ModuleDict()
    for pair in pairs:
        s, t = student_feats[pair.student], teacher_feats[pair.teacher]
        check_pair(pair, s, t)
        adapters[pair.key] = FeatureAdapter(int(s.shape[1]), int(t.shape[1]))
    return adapters


def auto_pairs(student_feats: Mapping[str, torch.Tensor], teacher_feats: Mapping[str, torch.Tensor],
               loss: str = "mse", weight: float = 1.0, last: int | None = None) -> list[FeaturePair]:
    """Pair taps without a recipe list: by name when the teacher has every student tap (AA-UNet and its
    student: level-wise soft labels), else each student tap with the teacher tap of the same spatial size
    (coarse to fine, each teacher tap used once).  ``last`` keeps the ``last`` finest pairs."""
    if student_feats and all(name in teacher_feats for name in student_feats):
        pairs = [FeaturePair(name, name, loss, weight) for name in student_feats]
    else:
        pairs, used = [], set()
        for s_name, s in student_feats.items():
            match = next((t_name for t_name, t in teacher_feats.items()
                          if t_name not in used and t.dim() == 4 and s.dim() == 4 and t.shape[-2:] == s.shape[-2:]),
                         None)
            if match is not None:
                used.add(match)
                pairs.append(FeaturePair(s_name, match, loss, weight))
    if not pairs:
        shapes = lambda feats: ", ".join(f"{k} {tuple(v.shape)}" for k, v in feats.items())  # noqa: E731
        raise AdapterError("no student tap has a teacher tap of the same name or spatial size; list the pairs "
                           f"in distill.features.pairs (student: {shapes(student_feats)}; teacher: "
                           f"{shapes(teacher_feats)})")
    return pairs[-last:] if last else pairs

"""Per-image held-out PSNR for the training benchmarks (distill_gain, seed_spread): every scene whole."""
from __future__ import annotations

from typing import Any

import torch

from distill.evaluation import DEFAULT_TASK, Task, evaluate


class PaddedToMultiple(torch.nn.Module):
    """Runs ``model`` on its input reflect-padded to a multiple of ``multiple`` and crops the output back, so a
    network with a coarser size contract (MobileDeepISP: 32) is scored on the same whole scenes as the rest."""

    def __init__(self, model: torch.nn.Module, multiple: int) -> None:
        super().__init__()
        self.model, self.multiple = model, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        padded = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
        out = self.model(padded)
        scale = out.shape[-1] // padded.shape[-1]
        return out[..., : h * scale, : w * scale]


def per_image_psnr(model: torch.nn.Module, pairs: list[Any], task: Task = DEFAULT_TASK,
                   multiple: int = 1) -> list[float]:
    """Held-out PSNR of every image on its own (the scene set is cut to a multiple of 16 packed pixels; a model
    that needs a coarser ``multiple`` runs on the scene reflect-padded to it, scored on the scene's own pixels)."""
    run = PaddedToMultiple(model, multiple) if multiple > 1 else model
    return [evaluate(run, [(torch.from_numpy(p.raw), torch.from_numpy(p.rgb))], task)["psnr"] for p in pairs]

"""Run by tests/distill/test_ddp.py under torchrun (and imported by it for the 1-process reference):
trains a tiny student with feature KD through train() and writes rank 0's weights and held-out scores."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from distill import distributed
from distill.adapters import FeaturePair
from distill.distiller import Distiller
from distill.evaluation import evaluate
from distill.trainer import TrainSpec, train

SPEC = TrainSpec(steps=12, lr=2e-2, batch_size=4, losses={"l1": 1.0, "ssim": 0.2}, log_every=1, device="cpu")


class Pairs(torch.utils.data.Dataset):
    """12 patches (3 global batches of 4 per epoch): RGB a fixed function of RAW, crops vary per epoch."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.raw = torch.rand(12, 4, 12, 12, generator=g)
        self.rgb = nn.functional.pixel_shuffle(self.raw[:, [0, 1, 2, 3] * 3] * 0.6 + 0.1, 2)[:, :3]
        self.epoch = 0
        self.seen: list[tuple[int, int]] = []  # (epoch, index) of every item this process read

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append((self.epoch, i))
        o = self.epoch % 3
        return self.raw[i, :, o : o + 8, o : o + 8], self.rgb[i, :, 2 * o : 2 * o + 16, 2 * o : 2 * o + 16]


class Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv2(torch.relu(self.conv1(x))))


def run() -> tuple[nn.Module, dict[str, float], list[tuple[int, int]]]:
    torch.manual_seed(0)
    teacher, student = Net(16), Net(6)
    kd = Distiller(teacher, output_weight=0.5, pairs=[FeaturePair("conv1", "conv1", "mse", 1.0)], feature_weight=0.1)
    data = Pairs()
    train(student, data, SPEC, seed=5, kd=kd)
    held_out = Pairs()
    pairs = [(held_out.raw[i], held_out.rgb[i]) for i in range(4)]
    return student, evaluate(student, pairs), data.seen


if __name__ == "__main__":
    distributed.init_from_env("cpu")
    model, scores, seen = run()
    out = Path(sys.argv[1])
    (out / f"seen{distributed.info().rank}.json").write_text(json.dumps(seen))
    if distributed.is_main():
        torch.save(model.state_dict(), out / "weights.pt")
        (out / "scores.json").write_text(json.dumps({**scores, "world_size": distributed.info().world_size}))

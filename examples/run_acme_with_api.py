"""Run ispdc from Python with models defined right here (no plugin package, no YAML file).

    .venv/bin/python examples/run_acme_with_api.py [--steps 200] [--workdir runs/acme_api]

The teacher is a module instance (its weights travel with it), the student a factory that takes the
recipe's ``config``; both are registered for this process under the names the recipe uses.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from recipes.api import run_recipe_with_models
from teachers.registry import ModelInfo


class TinyStudent(nn.Module):
    feature_taps = ("body",)

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(width, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workdir", default="runs/acme_api")
    args = parser.parse_args()
    teacher = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(32, 12, 3, padding=1), nn.PixelShuffle(2))
    train = {"steps": args.steps, "lr": 2e-3, "batch_size": 4, "losses": {"l1": 1.0}}
    recipe = {
        "name": "acme_api",
        "data": {"kind": "embedded", "max_side": 192, "patch_size": 32, "patches_per_image": 8},
        "teacher": {"model": "my_teacher", "train": train},
        "student": {"model": "my_student", "config": {"width": 12}, "train": train, "distill": {"output_kd": 0.5}},
        "prune": {"ratio": 0.25, "finetune": {**train, "steps": args.steps // 4}},
        "quantize": {"mode": "int8", "calibration_frames": 8},
        "export": {"input_size": [32, 32]},
    }
    run = run_recipe_with_models(recipe, workdir=args.workdir, teachers={"my_teacher": teacher},
                                 students={"my_student": (TinyStudent, ModelInfo(tiny_config={"width": 8}))})
    for stage, metrics in run.metrics.items():
        print(f"{stage:<9} psnr {metrics.get('psnr', float('nan')):6.2f} dB")
    print(f"bundle: {run.bundle}\nMLflow: {run.tracking_uri} (run {run.run_id})")


if __name__ == "__main__":
    main()

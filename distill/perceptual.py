"""VGG-19 perceptual (feature) loss with weights from a local file only: nothing is downloaded.

The network is VGG-19's convolutional part ("configuration E"), laid out exactly like
``torchvision.models.vgg19().features`` so a torchvision state_dict (``features.N.weight`` keys, or
the same keys without the ``features.`` prefix) loads as is.  Inputs in [0, 1] are normalised with the
ImageNet mean/std the weights were trained with; the loss is the MSE between feature maps at one layer
(``relu5_4`` by default, as in PyNET's perceptual loss).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distill.checkpointing import load_weights  # weights_only=True: a code-running pickle is a CheckpointError

VGG19_LAYOUT: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                                 512, 512, 512, 512, "M"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> list[str]:
    """torchvision index -> name like relu3_2, for the layers of VGG19_LAYOUT."""
    names, block, conv = [], 1, 1
    for item in VGG19_LAYOUT:
        if item == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return names


LAYER_NAMES = _layer_names()


def vgg19_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG19_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            channels = int(item)
    return nn.Sequential(*layers)


class PerceptualLoss(nn.Module):
    """MSE between VGG-19 features of prediction and target at ``layer``; the VGG is frozen."""

    mean: torch.Tensor  # buffers (ImageNet statistics)
    std: torch.Tensor

    def __init__(self, weights: Path, layer: str = "relu5_4") -> None:
        super().__init__()
        if layer not in LAYER_NAMES:
            raise ValueError(f"unknown VGG-19 layer {layer!r}; e.g. relu2_2, relu3_4, relu4_4, relu5_4")
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"perceptual loss weights {weights} not found: put a torchvision VGG-19 "
                                    "state_dict there (this toolkit never downloads weights)")
        features = vgg19_features()[: LAYER_NAMES.index(layer) + 1]
        state = load_weights(weights)
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        wanted = features.state_dict().keys()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise ValueError(f"{weights} is not a VGG-19 state_dict: missing {missing[:3]}")
        features.load_state_dict({k: state[k] for k in wanted})
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> PerceptualLoss:  # the VGG stays in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = self.features((pred - self.mean) / self.std)
        with torch.no_grad():
            b = self.features((target - self.mean) / self.std)
        return F.mse_loss(a, b)

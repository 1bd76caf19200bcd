"""Re-parameterization folding: collapse training-time structure into the plain convs that ship.

Two mechanisms, applied in this order by ``fold_model``:
1. every module with a ``reparameterize()`` method (multi-branch blocks) folds itself;
2. every Conv2d immediately followed by a BatchNorm2d inside an ``nn.Sequential`` (or a module that
   declares ``conv_bn_pairs``) is merged into one conv with a bias, and the BN becomes Identity.
The folded model is numerically the same function in eval mode.
"""
from __future__ import annotations

import copy
from typing import Protocol, cast

from torch import nn

from students.reparam import fold_conv_bn_pair, fuse_conv_bn

__all__ = ["fold_model", "fold_conv_bn_pair", "fuse_conv_bn"]


class _Reparameterizable(Protocol):
    def reparameterize(self) -> object: ...


def _fold_sequential_pairs(module: nn.Module) -> int:
    folded = 0
    for parent in list(module.modules()):
        pairs: list[tuple[str, str]] = list(getattr(parent, "conv_bn_pairs", ()))
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            pairs += [
                (a, b) for a, b in zip(names, names[1:])
                if isinstance(parent._modules[a], nn.Conv2d) and isinstance(parent._modules[b], nn.BatchNorm2d)
            ]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                fused, replacement = fold_conv_bn_pair(conv, bn)
                setattr(parent, conv_name, fused)
                setattr(parent, bn_name, replacement)
                folded += 1
    return folded


def fold_model(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, dict[str, int]]:
    """Fold every re-parameterizable block and Conv+BN pair; returns the model and what was folded."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    reparam = 0
    for module in list(model.modules()):
        if module is not model and hasattr(module, "reparameterize"):
            cast(_Reparameterizable, module).reparameterize()
            reparam += 1
    conv_bn = _fold_sequential_pairs(model)
    remaining = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return model, {"reparameterized_blocks": reparam, "conv_bn_folded": conv_bn, "batchnorm_left": remaining}

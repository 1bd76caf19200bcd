"""Re-parameterization folding: collapse training-time structure into the plain convs that ship.

Two mechanisms, applied in this order by ``fold_model``:
1. every module with a ``reparameterize()`` method (multi-branch blocks) folds itself;
2. every Conv2d immediately followed by a BatchNorm2d inside an ``nn.Sequential`` (or a module that
   declares ``conv_bn_pairs``) is merged into one conv with a bias, and the BN becomes Identity.
The folded model is numerically the same function in eval mode.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new conv equal to ``bn(conv(x))`` with BN running statistics (eval mode)."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    scale = gamma / std
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + beta)
    return fused


def fold_conv_bn_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[nn.Conv2d, nn.Module]:
    """``(fused conv, what replaces the BN)``: Identity, or the activation a norm+act module carries.

    timm's ``BatchNormAct2d`` subclasses ``BatchNorm2d`` but also applies ``drop`` and ``act``; swapping
    it for ``Identity`` would silently drop the activation, so those are kept.
    """
    extras = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
              if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    replacement = extras[0] if len(extras) == 1 else nn.Sequential(*extras) if extras else nn.Identity()
    return fuse_conv_bn(conv, bn), replacement


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
            module.reparameterize()
            reparam += 1
    conv_bn = _fold_sequential_pairs(model)
    remaining = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return model, {"reparameterized_blocks": reparam, "conv_bn_folded": conv_bn, "batchnorm_left": remaining}

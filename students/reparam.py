"""Re-parameterizable conv blocks: several linear branches while training, one conv when shipped.

Extra linear branches (and per-branch BatchNorm) help small ISP nets train, yet the function they
compute is a single linear convolution.  ``reparameterize()`` -- called by ``compress.fold.fold_model``
on every module that has it, so automatically before export -- sums the branches into one
``nn.Conv2d`` (bias=True) stored as ``self.reparam`` and deletes the branches, so the state_dict and
parameter count shrink to that conv's and ONNX/TFLite see one ``Conv``.  The folded block computes
the same function as the unfolded one in eval mode (BatchNorm on running statistics; tests check
1e-5 in fp32).  Folding always uses running statistics, also when called in train mode.

Blocks (stride 1, zero "same" padding, odd shipped kernel size ``k``; ``norm=True`` adds a
BatchNorm on the summed output, folded by the block itself -- see "Students" below):

* ``RepVGGBlock`` (Ding et al. 2021): ``BN(conv_kxk x) + BN(conv_1x1 x) [+ BN(x) if in == out]``.
* ``ECB`` (Zhang et al. 2021, ECBSR; MAI 2022 report, seed 002, team HITZST01): ``conv3x3 x``
  ``+ conv3x3(conv1x1_expand x)`` (expand to ``out * depth_multiplier`` channels) ``+ sum over
  {Sobel-x, Sobel-y, Laplacian} of scale * D_mask(conv1x1 x) + bias`` (fixed depthwise masks,
  learned per-channel scale and bias, both initialised N(0, 1e-3) as in ECBSR) ``[+ x if in ==
  out]`` (ECBSR's ``with_idt``).  As ECBSR does, every 1x1 output that feeds a 3x3 is padded with
  its 1x1 *bias*, not zeros: the composite then equals one zero-padded 3x3 conv at every position
  (with zero padding the bias would leak in only at the border and no single conv could match).
  Consequence: in the mask branches the 1x1 bias drops out (the masks sum to zero), as in ECBSR.
* ``EReopConv`` (MAI 2022 report, seed 002, team Multimedia, Sec. 4.2 / Fig. 4): "eReopConv with
  5x5 kernel size has ten convolution layers with a kernel size ranging from 1x1 to 5x5".  Our
  reading: for every size ``s`` in 1..k *two* s x s convs, one followed by a BatchNorm (a RepVGG
  branch) and one bare with a bias -- 2k convs, i.e. exactly ten for k = 5.  The two same-size
  branches are one conv in the linear sense but train differently (one is normalised by batch
  statistics, one is not), the same argument RepVGG makes for its BN'd branches.  Even sizes use
  PyTorch's asymmetric "same" padding (``(s-1)//2`` before, ``s//2`` after), so an even kernel sits
  at offset ``k//2 - (s-1)//2`` in the k x k frame; odd ones are centred.  The report gives no
  identity branch; we add none.

Students: ``Smallnet`` and ``LWISP`` take ``block=`` (``"conv"``, the default, keeps the plain
layers, their parameter counts and state_dict keys), so a recipe says ``student.config: {block:
ecb}``.  In a student the block replaces a 3x3 conv, so ``"ereop"`` there has sizes 1..3 (six
convs); the shipped network is identical whichever block trained it.  Smallnet's ``batch_norm``
becomes the block's ``norm``: fold's Conv+BN pairing needs a plain ``nn.Conv2d`` beside the BN,
so a rep block folds its own output BN instead (the checkpoint keys are ``convN.norm.*``).

Pruning and checkpoints: torch-pruning prunes through all three blocks (the ECB edge branches keep
their learned scale/bias in a depthwise 1x1 conv and expand their fixed mask to the live channel
count), ``reparameterize`` reads channel counts from the pruned weights, and a folded student is
rebuilt from its registry name + config by ``compress.checkpoint.build_model`` folding a fresh one.
"""
from __future__ import annotations

from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import nn

BlockKind = Literal["conv", "repvgg", "ecb", "ereop"]
BLOCKS: tuple[str, ...] = get_args(BlockKind)
_Pair = tuple[int, int]  # a Conv2d's kernel_size, stride, padding, dilation (torch types them tuple[int, ...])

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
ECB_INIT_STD = 1e-3  # ECBSR's init of the mask branches' scale and bias


def check_block(kind: str) -> None:
    """Raise a ValueError naming the choices, so a typo in a recipe's ``block:`` is fixed at once."""
    if kind not in BLOCKS:
        raise ValueError(f"unknown block {kind!r}; choose from {', '.join(BLOCKS)}")


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(x) == scale * x + shift`` per channel in eval mode."""
    running_mean, running_var = _running_stats(bn)
    std = torch.sqrt(running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - running_mean * scale


def _running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(running_mean, running_var)``, which torch types Optional: they are None only for a BatchNorm built
    without ``track_running_stats``, which cannot be folded (the arithmetic on them then raises)."""
    return cast(torch.Tensor, bn.running_mean), cast(torch.Tensor, bn.running_var)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of a conv this module built with one (torch types it Optional)."""
    return cast(torch.Tensor, conv.bias)


def _after_bn(kernel: torch.Tensor, bias: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))``."""
    scale, shift = _bn_affine(bn)
    return kernel * scale.reshape(-1, 1, 1, 1), bias * scale + shift


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new conv equal to ``bn(conv(x))`` with BN running statistics (eval mode)."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, cast(_Pair, conv.kernel_size), cast(_Pair, conv.stride),
        cast("str | _Pair", conv.padding), cast(_Pair, conv.dilation), conv.groups, bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(_running_stats(bn)[0])
    weight, fused_bias = _after_bn(conv.weight, bias, bn)
    fused.weight.copy_(weight)
    _bias(fused).copy_(fused_bias)
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


def _embed(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad an ``s x s`` kernel into the ``size x size`` frame where "same" padding puts it."""
    s = kernel.shape[-1]
    before = size // 2 - (s - 1) // 2
    after = size - s - before
    return F.pad(kernel, (before, after, before, after))


def _identity_kernel(channels: int, size: int, like: torch.Tensor) -> torch.Tensor:
    kernel = torch.zeros(channels, channels, size, size, device=like.device, dtype=like.dtype)
    kernel[torch.arange(channels), torch.arange(channels), size // 2, size // 2] = 1.0
    return kernel


def _pad_with_bias(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Pad by one pixel with each channel's ``bias`` (ECBSR), exactly: ``y`` inside, ``bias`` on the rim."""
    rim = F.pad(torch.zeros_like(y[:1, :1]), (1, 1, 1, 1), value=1.0)
    return F.pad(y, (1, 1, 1, 1)) + rim * bias.reshape(1, -1, 1, 1)


class RepBlock(nn.Module):
    """Shared shell: ``forward`` runs the branches (then ``norm``) until ``reparameterize()``, then one conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, norm: bool) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{type(self).__name__} needs an odd kernel size (symmetric 'same' padding); "
                             f"got {kernel_size}")
        self.kernel_size = kernel_size  # channel counts are read from the weights: pruning changes them
        self.norm: nn.Module = nn.BatchNorm2d(out_ch) if norm else nn.Identity()
        self.reparam: nn.Conv2d | None = None

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the training-time branches."""
        raise NotImplementedError

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out, in, k, k)`` kernel and ``(out,)`` bias equal to ``branches`` in eval mode."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.reparam(x)
        return self.norm(self.branches(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace every branch (and ``norm``) by one conv; a second call does nothing."""
        if self.reparam is not None:
            return
        kernel, bias = self.kernel_bias()
        if isinstance(self.norm, nn.BatchNorm2d):
            kernel, bias = _after_bn(kernel, bias, self.norm)
        out_ch, in_ch = kernel.shape[:2]
        conv = nn.Conv2d(in_ch, out_ch, self.kernel_size, padding=self.kernel_size // 2)
        conv = conv.to(device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        _bias(conv).copy_(bias)
        for store in (self._modules, self._parameters, self._buffers):
            for name in list(store):
                delattr(self, name)
        self.reparam = conv


class SameConv(nn.Conv2d):
    """Stride-1 s x s conv with zero "same" padding, ``(s-1)//2`` before and ``s//2`` after.

    Even sizes need the asymmetric split; padding it explicitly avoids PyTorch's ``padding="same"``
    warning and copy for even kernels and states the offset ``_embed`` relies on.
    """

    def __init__(self, in_ch: int, out_ch: int, size: int, bias: bool = True) -> None:
        super().__init__(in_ch, out_ch, size, bias=bias)
        before, after = (size - 1) // 2, size // 2
        self.pads = (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads))


class ConvBN(nn.Module):
    """``bn(conv(x))`` with a bias-free s x s "same" conv: one normalised branch."""

    def __init__(self, in_ch: int, out_ch: int, size: int) -> None:
        super().__init__()
        self.conv = SameConv(in_ch, out_ch, size, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = _after_bn(self.conv.weight, torch.zeros_like(_running_stats(self.bn)[0]), self.bn)
        return _embed(kernel, size), bias


class RepVGGBlock(RepBlock):
    """RepVGG: k x k conv+BN, 1x1 conv+BN and, when in == out, an identity BN."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, norm: bool = False) -> None:
        super().__init__(in_ch, out_ch, kernel_size, norm)
        self.dense = ConvBN(in_ch, out_ch, kernel_size)
        self.pointwise = ConvBN(in_ch, out_ch, 1)
        self.identity = nn.BatchNorm2d(in_ch) if in_ch == out_ch else None

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x) + self.pointwise(x)
        return y + self.identity(x) if self.identity is not None else y

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.kernel_size
        (k1, b1), (k2, b2) = self.dense.kernel_bias(k), self.pointwise.kernel_bias(k)
        kernel, bias = k1 + k2, b1 + b2
        if self.identity is not None:
            ki, bi = _after_bn(_identity_kernel(kernel.shape[0], k, kernel), torch.zeros_like(bias), self.identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias


class MaskBranch(nn.Module):
    """ECB edge branch: ``scale * D(pad_bias(conv1x1 x)) + bias``, D a fixed 3x3 depthwise mask.

    ``scale * D(y) + bias`` equals ECBSR's depthwise conv with kernel ``scale * mask`` and bias.  The
    learned per-channel scale and bias live in a depthwise 1x1 conv (``affine``) and the mask is one
    non-persistent (1, 1, 3, 3) buffer expanded to the channel count at run time, so torch-pruning
    prunes the branch like any conv and nothing channel-shaped is left behind.
    """

    mask: torch.Tensor

    def __init__(self, in_ch: int, out_ch: int, mask: tuple[tuple[float, ...], ...]) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(in_ch, out_ch, 1)
        self.affine = nn.Conv2d(out_ch, out_ch, 1, groups=out_ch)
        with torch.no_grad():
            self.affine.weight.normal_(0.0, ECB_INIT_STD)
            _bias(self.affine).normal_(0.0, ECB_INIT_STD)
        self.register_buffer("mask", torch.tensor(mask).reshape(1, 1, 3, 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _pad_with_bias(self.conv1x1(x), _bias(self.conv1x1))
        channels = y.shape[1]
        return self.affine(F.conv2d(y, self.mask.expand(channels, 1, 3, 3), groups=channels))

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.affine.weight.reshape(-1)
        kernel = scale.reshape(-1, 1, 1, 1) * self.conv1x1.weight * self.mask  # (out, in, 1, 1) * (1, 1, 3, 3)
        bias = _bias(self.affine) + scale * _bias(self.conv1x1) * self.mask.sum()
        return kernel, bias


class ECB(RepBlock):
    """Edge-oriented Convolution Block (ECBSR): 3x3, 1x1->3x3, 1x1->Sobel-x/Sobel-y/Laplacian [+ x]."""

    def __init__(self, in_ch: int, out_ch: int, depth_multiplier: float = 2.0, identity: bool = True,
                 norm: bool = False) -> None:
        super().__init__(in_ch, out_ch, 3, norm)
        mid = int(out_ch * depth_multiplier)
        if mid < 1:
            raise ValueError(f"ECB depth_multiplier {depth_multiplier} leaves no channels for {out_ch} outputs")
        self.conv3x3 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.expand = nn.Conv2d(in_ch, mid, 1)
        self.expand_3x3 = nn.Conv2d(mid, out_ch, 3)  # no padding: its input is padded with the 1x1 bias
        self.sobel_x = MaskBranch(in_ch, out_ch, SOBEL_X)
        self.sobel_y = MaskBranch(in_ch, out_ch, SOBEL_Y)
        self.laplacian = MaskBranch(in_ch, out_ch, LAPLACIAN)
        self.with_idt = identity and in_ch == out_ch

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3x3(x) + self.expand_3x3(_pad_with_bias(self.expand(x), _bias(self.expand)))
        y = y + self.sobel_x(x) + self.sobel_y(x) + self.laplacian(x)
        return y + x if self.with_idt else y

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = self.conv3x3.weight.clone(), _bias(self.conv3x3).clone()
        k1 = self.expand_3x3.weight
        kernel += torch.einsum("omuv,mi->oiuv", k1, self.expand.weight[:, :, 0, 0])
        bias += _bias(self.expand_3x3) + torch.einsum("omuv,m->o", k1, _bias(self.expand))
        for branch in (self.sobel_x, self.sobel_y, self.laplacian):
            k, b = branch.kernel_bias()
            kernel, bias = kernel + k, bias + b
        if self.with_idt:
            kernel += _identity_kernel(kernel.shape[0], 3, kernel)
        return kernel, bias


class EReopConv(RepBlock):
    """Multi-kernel eReopConv (team Multimedia): for s in 1..k an s x s conv+BN and a bare s x s conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5, norm: bool = False) -> None:
        super().__init__(in_ch, out_ch, kernel_size, norm)
        sizes = range(1, kernel_size + 1)
        self.normed = nn.ModuleList(ConvBN(in_ch, out_ch, s) for s in sizes)
        self.plain = nn.ModuleList(SameConv(in_ch, out_ch, s) for s in sizes)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        y = self.normed[0](x)
        for branch in [*self.normed[1:], *self.plain]:
            y = y + branch(x)
        return y

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.kernel_size
        normed, plain = cast("list[ConvBN]", list(self.normed)), cast("list[SameConv]", list(self.plain))
        kernel, bias = normed[0].kernel_bias(k)
        for branch in normed[1:]:
            kb, bb = branch.kernel_bias(k)
            kernel, bias = kernel + kb, bias + bb
        for conv in plain:
            kernel, bias = kernel + _embed(conv.weight, k), bias + _bias(conv)
        return kernel, bias


def make_conv(kind: BlockKind, in_ch: int, out_ch: int, kernel_size: int = 3, *, norm: bool = False) -> nn.Module:
    """A "same" k x k conv of the given kind; ``norm`` adds a BatchNorm after it (folded with it)."""
    check_block(kind)
    if kind == "conv":
        conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        return nn.Sequential(conv, nn.BatchNorm2d(out_ch)) if norm else conv
    if kind == "repvgg":
        return RepVGGBlock(in_ch, out_ch, kernel_size, norm=norm)
    if kind == "ecb":
        if kernel_size != 3:
            raise ValueError(f"ECB is a 3x3 block (ECBSR); got kernel_size={kernel_size}")
        return ECB(in_ch, out_ch, norm=norm)
    return EReopConv(in_ch, out_ch, kernel_size, norm=norm)

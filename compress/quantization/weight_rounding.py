"""Weight-side post-training quantization, expressed as float weights/biases that TFLite reproduces.

The pipeline quantizes a *float* model with TFLite's own INT8 converter, which quantizes conv weights per
output channel, symmetric, narrow range: ``scale_c = max|W_c| / 127``, ``q = round(W / scale_c)`` in
[-127, 127] (round half away from zero), and biases to int32 at ``input_scale * scale_c``.  So each method here
only edits float parameters, in a way that survives that quantizer:

* :func:`bias_correct` (empirical bias correction, Nagel et al. 2019 / AIMET) keeps the float weights and
  moves each conv's bias by ``-(W_q - W) E[x]``, the mean output shift TFLite's weight rounding will cause.
  The bias stays float; TFLite quantizes it finely (scale ``input_scale * scale_c``), so the shift survives.
* :func:`adaround` (AdaRound, Nagel et al. 2020) chooses floor/ceil per weight to minimise the layer's output
  reconstruction error, then *snaps* the float weights onto the grid, ``W = scale_c * q``, with each channel's
  extreme weight pinned at ``|q| = 127`` so TFLite recomputes the same scale and rounds back to exactly ``q``.

AdaRound rather than GPTQ: AdaRound only picks up/down per weight, so ``|q| <= 127`` holds and the pinned
extreme stays put by construction, which is what keeps the grid invariant under TFLite's re-quantization; GPTQ
moves not-yet-quantized weights to compensate errors and can push them past the fixed range or move a pinned
extreme.  GPTQ's Hessian (``Cin*k*k`` square per layer) is also ill-conditioned with few calibration frames and
tiny for depthwise convs (9x9), where its error compensation has almost nothing to work with; AdaRound's
objective is the layer output error directly and only needs a few hundred Adam steps on small layers.

Apply both after folding (``compress.fold.fold_model``): TFLite quantizes the folded conv, so a BatchNorm that
is folded later would change the weights and move them off the grid.  Only ``nn.Conv2d`` (grouped/depthwise
included) is handled everywhere; ``bias_correct`` also handles ``nn.ConvTranspose2d`` with ``groups == 1``
(exported as TRANSPOSE_CONV, quantized per output channel); everything else is left as is.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["tflite_weight_quant", "bias_correct", "adaround", "adaround_layer", "snap_to_grid", "sample_columns"]

QMAX = 127
_ZETA, _GAMMA = 1.1, -0.1  # AdaRound's rectified sigmoid stretch


def _quant_axis(module: nn.Module) -> int:
    """TFLite's per-channel axis in torch's layout: Conv2d is [O, I/g, kh, kw], ConvTranspose2d [I, O/g, kh, kw]."""
    return 1 if isinstance(module, nn.ConvTranspose2d) else 0


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def tflite_weight_quant(weight: torch.Tensor, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """TFLite's per-channel symmetric narrow-range quantization: (q as float tensor, per-channel scale).

    ``scale`` has the weight's rank with size 1 except along ``axis``, so ``q * scale`` dequantizes.  An all-zero
    channel gets scale 1 (its q is 0 whatever the scale)."""
    w = weight.detach().float()
    dims = [d for d in range(w.dim()) if d != axis]
    amax = w.abs().amax(dim=dims, keepdim=True)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.clamp(_round_half_away(w * (1.0 / scale)), -QMAX, QMAX)
    return q, scale


_Conv = nn.Conv2d | nn.ConvTranspose2d


def _convs(model: nn.Module, transposed: bool) -> list[_Conv]:
    """Conv2d (exact type: quantized wrappers are not ours) and, if asked, ConvTranspose2d with groups == 1."""
    out: list[_Conv] = []
    for m in model.modules():
        if type(m) is nn.Conv2d or (transposed and type(m) is nn.ConvTranspose2d and m.groups == 1):
            out.append(m)
    return out


def _chunks(frames: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, frames.shape[0], batch_size):
        yield frames[i:i + batch_size]


def _run_with_hooks(model: nn.Module, frames: torch.Tensor, hooks: dict[nn.Module, Callable[..., None]],
                    batch_size: int, stop_after: nn.Module | None = None) -> None:
    """Forward the frames (eval, no grad) with forward pre-hooks; optionally abort right after ``stop_after``'s hook."""

    class _Stop(Exception):
        pass

    def wrap(module: nn.Module, fn: Callable[..., None]) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            fn(mod, args[0])
            if mod is stop_after:
                raise _Stop
        return hook

    handles = [m.register_forward_pre_hook(wrap(m, fn)) for m, fn in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in _chunks(frames, batch_size):
                try:
                    model(chunk)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _forward_order(model: nn.Module, convs: list[_Conv], frames: torch.Tensor) -> list[_Conv]:
    seen: list[nn.Module] = []
    _run_with_hooks(model, frames[:1], {m: lambda m, x: seen.append(m) if m not in seen else None for m in convs}, 1)
    order = [m for m in seen if isinstance(m, _Conv)]
    return order + [m for m in convs if m not in order]  # never called: keep, they get E[x] = 0 (no shift)


def _mean_shift(module: _Conv, dw: torch.Tensor, mean_x: torch.Tensor) -> torch.Tensor:
    """Expected output shift per output channel, ``sum_{cin, taps} dW * E[x_cin]``, ignoring the border effect.

    Zero padding makes the true mean slightly smaller near the borders (taps that read padding see 0, not E[x]);
    that is ignored, as in AIMET.  For a transposed conv each input pixel spreads its k*k taps over
    stride_h*stride_w output pixels, so the mean over output positions is the tap sum divided by the stride area."""
    taps = dw.sum(dim=(2, 3))
    if isinstance(module, nn.ConvTranspose2d):  # [I, O], groups == 1
        return (taps.t() @ mean_x) / float(module.stride[0] * module.stride[1])
    g = module.groups if isinstance(module, nn.Conv2d) else 1
    out_c, cpg = taps.shape
    per_group = taps.reshape(g, out_c // g, cpg)
    return torch.einsum("goj,gj->go", per_group, mean_x.reshape(g, cpg)).reshape(out_c)


def bias_correct(model: nn.Module, frames: torch.Tensor, sequential: bool = True, batch_size: int = 8) -> nn.Module:
    """Return a deep copy whose conv biases cancel the mean output shift of TFLite's weight rounding.

    Sequential (the default): convs are corrected one by one in forward order, and ``E[x]`` for each is measured
    on a shadow copy whose earlier convs already carry ``W_q`` and their corrected bias, i.e. the input statistics
    the quantized model will see (one truncated forward pass per conv).  ``sequential=False`` measures every
    ``E[x]`` in one pass of the float model.  The returned model keeps its float weights (TFLite quantizes them
    to exactly ``W_q``); a conv without a bias gets one only if its correction is non-zero."""
    result = copy.deepcopy(model).eval()
    shadow = copy.deepcopy(model).eval()
    frames = frames.detach().float()
    pairs = dict(zip(_convs(shadow, transposed=True), _convs(result, transposed=True)))
    order = _forward_order(shadow, list(pairs), frames)

    def measure(targets: list[_Conv], stop: nn.Module | None) -> dict[nn.Module, torch.Tensor]:
        sums: dict[nn.Module, torch.Tensor] = {}
        counts: dict[nn.Module, int] = {}

        def acc(m: nn.Module, x: torch.Tensor) -> None:
            sums[m] = sums.get(m, 0) + x.float().sum(dim=(0, 2, 3))
            counts[m] = counts.get(m, 0) + x.shape[0] * x.shape[2] * x.shape[3]
        _run_with_hooks(shadow, frames, {m: acc for m in targets}, batch_size, stop)
        return {m: sums[m] / counts[m] for m in sums}

    means = {} if sequential else measure(order, None)
    for conv in order:
        if sequential:
            means.update(measure([conv], conv))
        axis = _quant_axis(conv)
        q, scale = tflite_weight_quant(conv.weight, axis)
        wq = (q * scale).to(conv.weight.dtype)
        in_channels = conv.weight.shape[0] if axis else conv.weight.shape[1] * conv.groups
        mean_x = means.get(conv, torch.zeros(in_channels))
        shift = _mean_shift(conv, wq - conv.weight.detach(), mean_x.to(wq.dtype))
        target = pairs[conv]
        for m in (conv, target):
            if m.bias is None:
                if not torch.any(shift != 0):
                    continue
                m.bias = nn.Parameter(torch.zeros_like(shift))
            bias = m.bias
            assert bias is not None
            bias.data -= shift
        conv.weight.data.copy_(wq)  # shadow only: downstream E[x] sees the quantized layer
    return result


def _conv_padded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, list(conv._reversed_padding_repeated_twice), mode=mode)


def sample_columns(conv: nn.Conv2d, x: torch.Tensor, positions: int, gen: torch.Generator) -> torch.Tensor:
    """Input patches of ``positions`` random output pixels, as [P, Cin, kh, kw] (no full im2col of the frames)."""
    xp = _conv_padded(conv, x)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    total = xp.shape[0] * ho * wo
    idx = torch.randperm(total, generator=gen)[:positions]
    n, y, xx = idx // (ho * wo), (idx // wo) % ho, idx % wo
    rows = (y * sh)[:, None] + torch.arange(kh) * dh  # [P, kh]
    cols = (xx * sw)[:, None] + torch.arange(kw) * dw  # [P, kw]
    patches = xp[n[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [P, kh, kw, C]
    return patches.permute(0, 3, 1, 2).contiguous()


def _grouped_matmul(conv: nn.Conv2d, cols: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Conv output (without bias) at the sampled positions: [P, Cout]."""
    g, p = conv.groups, cols.shape[0]
    x = cols.reshape(p, g, -1).transpose(0, 1)  # [g, P, cpg*kh*kw]
    w = weight.reshape(g, weight.shape[0] // g, -1)  # [g, O/g, cpg*kh*kw]
    return torch.bmm(x, w.transpose(1, 2)).transpose(0, 1).reshape(p, -1)


def snap_to_grid(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float weights TFLite quantizes back to exactly ``q`` with the same scale (if each channel has |q| = 127)."""
    return q * scale


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)


def adaround_layer(conv: nn.Conv2d, cols: torch.Tensor, iters: int = 300, lr: float = 0.1, reg: float = 3.0,
                   batch: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaRound one conv on sampled input patches: (q in [-127, 127], TFLite's per-channel scale).

    Minimises ``|| W x - W_soft x ||^2`` (normalised to 1 at round-to-nearest) plus AdaRound's rounding
    regulariser (beta annealed 20 -> 2 after a 20% warm-up), then rounds each soft choice.  ``lr`` and ``reg`` are
    far above the paper's (1e-3, 0.01 with 20k steps) so that a few hundred steps settle each weight on 0 or 1.
    Each channel's extreme weight(s) keep their round-to-nearest q
    (|q| = 127), so the scale is unchanged.  If the result reconstructs the sampled patches worse than
    round-to-nearest (possible with very few iterations), round-to-nearest is returned."""
    w = conv.weight.detach().float()
    q_near, scale = tflite_weight_quant(w)
    w_floor = torch.floor(w / scale)
    frac = (w / scale - w_floor).clamp(0.0, 1.0)
    v = torch.log((frac - _GAMMA) / (_ZETA - frac)).clamp(-8, 8)  # h(v) == frac at start
    v = v.clone().requires_grad_(True)
    pinned = w.abs() == w.abs().amax(dim=(1, 2, 3), keepdim=True)
    cols = cols.float()
    target = _grouped_matmul(conv, cols, w)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([v], lr=lr)
    warm = int(0.2 * iters)
    with torch.no_grad():  # normalise: the reconstruction term is ~1 at round-to-nearest, whatever the layer's scale
        norm = F.mse_loss(_grouped_matmul(conv, cols, q_near * scale), target).clamp_min(1e-30)
    with torch.enable_grad():  # callers may well hold torch.no_grad()
        for it in range(iters):
            idx = torch.randint(0, cols.shape[0], (min(batch, cols.shape[0]),), generator=gen)
            h = _rectified_sigmoid(v)
            w_soft = torch.clamp(w_floor + h, -QMAX, QMAX) * scale
            loss = F.mse_loss(_grouped_matmul(conv, cols[idx], w_soft), target[idx]) / norm
            if it >= warm:
                beta = 2.0 + 18.0 * 0.5 * (1.0 + math.cos(math.pi * (it - warm) / max(1, iters - warm)))
                loss = loss + reg * (1.0 - (2.0 * h - 1.0).abs().pow(beta)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    q = torch.clamp(w_floor + (v.detach() >= 0).float(), -QMAX, QMAX)
    q = torch.where(pinned, q_near, q)

    def err(qq: torch.Tensor) -> float:
        return float(F.mse_loss(_grouped_matmul(conv, cols, qq * scale), target))
    return (q if err(q) <= err(q_near) else q_near), scale


def adaround(model: nn.Module, frames: torch.Tensor, iters: int = 300, seed: int = 0, positions: int = 2048,
             batch_size: int = 8) -> nn.Module:
    """Return a deep copy whose Conv2d weights are AdaRound-ed and snapped onto TFLite's grid.

    Each layer's inputs are its float inputs in the float model (one pass, patches sampled at ``positions``
    random output pixels per layer), so layers are independent and errors are not propagated; biases stay float.
    ConvTranspose2d and other modules are left as is."""
    result = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    convs = _convs(result, transposed=False)
    per_call = max(1, positions // max(1, math.ceil(frames.shape[0] / batch_size)))
    cols: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in convs}

    def grab(m: nn.Module, x: torch.Tensor) -> None:
        assert isinstance(m, nn.Conv2d)
        cols[m].append(sample_columns(m, x.float(), per_call, gen))
    _run_with_hooks(result, frames.detach().float(), {m: grab for m in convs}, batch_size)
    for i, conv in enumerate(convs):
        if not cols[conv] or not isinstance(conv, nn.Conv2d):
            continue
        q, scale = adaround_layer(conv, torch.cat(cols[conv])[:positions], iters=iters, seed=seed + i)
        conv.weight.data.copy_(snap_to_grid(q, scale).to(conv.weight.dtype))
    return result

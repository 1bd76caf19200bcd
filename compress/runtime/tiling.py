"""Full-resolution inference in tiles: any packed RAW size through a model with a fixed (or small) input.

A 12 MP photo is a 4 x 1500 x 2000 packed tensor: too big for a TFLite model exported at 256 x 256 and
wasteful to run in one piece on a phone.  ``tiled_inference`` cuts it into overlapping tiles, runs
them in batches and blends the outputs back together:

* **overlap rule**: every tile carries ``overlap`` packed pixels of context on each side whose outputs
  get weight 0 (a tile edge is zero-padded inside the network, so outputs within the receptive-field
  margin of the edge are wrong).  With ``overlap >= receptive_field_margin(model)`` every output pixel
  comes from a tile that saw its whole receptive field: tiled equals untiled inference in the interior.
* **blending**: beyond the context band, neighbouring tiles cross-fade over ``blend`` pixels with a
  raised-cosine window (the two weights sum to 1), which hides seams where the overlap is smaller
  than the field (models with global pooling) or where a quantized model differs slightly per tile.
  Neighbouring tiles therefore share ``2 * overlap + blend`` pixels.
* **edges**: the image is reflect-padded (per packed channel, so CFA colours stay put) by ``overlap``
  and up to a whole number of tiles, so any H and W work, odd ones too; the output is cropped back
  to exactly ``(3, 2H, 2W)``.
* **memory**: tiles are cut, run and accumulated one batch at a time; only the padded input, the
  output image and a weight map at packed resolution are held (about 40 bytes per packed pixel).

This module needs numpy alone (ai-edge-litert only when a ``TFLiteModel`` is built) and imports nothing
of the project: every hand-off bundle ships a copy of it as ``ispdc_tiling.py`` beside ``run_model.py``,
so an app team's runner and ``ispdc process`` tile with the same code.  The PyTorch adapters live in
``compress.runtime.tiling_torch``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RunBatch = Callable[[np.ndarray], np.ndarray]  # (N, 4, h, w) float32 -> (N, 3, s*h, s*w) float32
DEFAULT_BLEND = 8  # packed pixels of cross-fade between neighbouring tiles
TFLITE_TILES_PER_CALL = 16  # tiles gathered per run_batch call (the interpreter runs its own batch at a time)
INTEGER_DTYPES = (np.int8, np.uint8, np.int16)


class UnboundedReceptiveFieldError(ValueError):
    """The centre of the probe depends on inputs near its border: global pooling or a very large field."""


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles go along both axes, in padded coordinates (the image starts at ``pad_before``)."""

    height: int
    width: int
    tile: tuple[int, int]
    overlap: int
    blend: int
    pad_before: int
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.starts_y[-1] + self.tile[0], self.starts_x[-1] + self.tile[1]


@dataclass(frozen=True)
class ReceptiveField:
    """How far (packed pixels, Chebyshev distance) one input pixel reaches into the output."""

    margin: int
    bounded: bool  # False: the field reaches past a quarter of the probe (global pooling or very wide)
    probe: tuple[int, int]


def _axis_starts(length: int, tile: int, overlap: int, blend: int, align: int) -> tuple[tuple[int, ...], int]:
    """Tile starts along one axis and the padding before the image, for a uniform step."""
    pad_before = math.ceil(overlap / align) * align
    needed = pad_before + length + overlap  # the image plus context on both sides
    if needed <= tile:
        return (0,), pad_before
    step = (tile - 2 * overlap - blend) // align * align
    if step <= 0:
        raise ValueError(f"tile {tile} is too small for overlap {overlap} and blend {blend} "
                         f"(need tile > 2 * overlap + blend{f', step a multiple of {align}' if align > 1 else ''})")
    count = math.ceil((needed - tile) / step) + 1
    return tuple(i * step for i in range(count)), pad_before


def plan_tiles(height: int, width: int, tile: int | tuple[int, int], overlap: int, blend: int = DEFAULT_BLEND,
               align: int = 1) -> TilePlan:
    """Tile layout for a packed ``height x width`` image; ``align`` keeps tile origins on a grid
    (e.g. 16 for a net with four 2x2 poolings, so every tile pools like the whole image would)."""
    th, tw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1 packed pixels; got {height}x{width}")
    if th < 1 or tw < 1 or overlap < 0 or blend < 0 or align < 1:
        raise ValueError(f"need tile >= 1, overlap >= 0, blend >= 0, align >= 1; got tile {th}x{tw}, "
                         f"overlap {overlap}, blend {blend}, align {align}")
    if th % align or tw % align:
        raise ValueError(f"tile {th}x{tw} must be a multiple of align {align}")
    ys, pad_y = _axis_starts(height, th, overlap, blend, align)
    xs, pad_x = _axis_starts(width, tw, overlap, blend, align)
    assert pad_y == pad_x
    return TilePlan(height, width, (th, tw), overlap, blend, pad_y, ys, xs)


def _window(length: int, overlap: int, ramp: int, before: bool, after: bool) -> np.ndarray:
    """1-D tile weight: 0 in the context band, raised cosine over ``ramp``, 1 inside; a side without a
    neighbour (``before``/``after`` False) keeps weight 1 up to the edge (it is padding, cropped later)."""
    d = np.arange(length, dtype=np.float64)
    w = np.ones(length)
    for has_neighbour, dist in ((before, d), (after, length - 1 - d)):
        if not has_neighbour:
            continue
        fade = np.sin(0.5 * np.pi * np.clip((dist - overlap + 0.5) / ramp, 0.0, 1.0)) ** 2 if ramp > 0 else 1.0
        w = np.minimum(w, np.where(dist < overlap, 0.0, fade))
    return w.astype(np.float32)


def _tiles(padded: np.ndarray, plan: TilePlan) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
    th, tw = plan.tile
    for iy, y in enumerate(plan.starts_y):
        for ix, x in enumerate(plan.starts_x):
            yield iy, ix, y, x, padded[y : y + th, x : x + tw]


def _ones(window: np.ndarray) -> tuple[int, int]:
    """The range where a window is exactly 1 (one run: 0, ramp up, 1, ramp down, 0); (0, 0) if none."""
    ones = np.flatnonzero(window == 1.0)
    return (int(ones[0]), int(ones[-1]) + 1) if len(ones) else (0, 0)


def _accumulate(target: np.ndarray, crop: np.ndarray, wy: np.ndarray, wx: np.ndarray, scale: int) -> None:
    """``target += crop * outer(wy, wx)`` (each weight over its ``scale x scale`` output block), with the part
    where both weights are 1 copied instead: there no neighbour has a non-zero weight, so a copy gives the
    same numbers and saves the multiply-add over ~90 % of the image."""

    def add(rows: tuple[int, int], cols: tuple[int, int]) -> None:
        (r0, r1), (c0, c1) = rows, cols
        if r1 > r0 and c1 > c0:
            part = crop[scale * r0 : scale * r1, scale * c0 : scale * c1]
            weighted = part.reshape(r1 - r0, scale, c1 - c0, scale, -1) * np.outer(wy[r0:r1], wx[c0:c1])[
                :, None, :, None, None]
            target[scale * r0 : scale * r1, scale * c0 : scale * c1] += weighted.reshape(part.shape)

    (a, b), (c, d) = _ones(wy), _ones(wx)
    if b == a or d == c:
        add((0, len(wy)), (0, len(wx)))
        return
    target[scale * a : scale * b, scale * c : scale * d] = crop[scale * a : scale * b, scale * c : scale * d]
    add((0, a), (0, len(wx)))
    add((b, len(wy)), (0, len(wx)))
    add((a, b), (0, c))
    add((a, b), (d, len(wx)))


def tiled_inference(
    packed: np.ndarray,
    run_batch: RunBatch,
    tile: int | tuple[int, int],
    overlap: int,
    blend: int = DEFAULT_BLEND,
    batch: int = 1,
    scale: int = 2,
    align: int = 1,
    channels_last: bool = False,
) -> np.ndarray:
    """Packed RAW ``(4, H, W)`` -> output ``(C, scale*H, scale*W)`` float32 through ``run_batch`` in tiles.

    ``run_batch`` gets up to ``batch`` tiles ``(n, 4, th, tw)`` at a time and returns
    ``(n, C, scale*th, scale*tw)``.  With ``channels_last`` everything is NHWC instead: ``packed`` is
    ``(H, W, 4)``, tiles ``(n, th, tw, 4)``, outputs ``(n, scale*th, scale*tw, C)`` and the result
    ``(scale*H, scale*W, C)``: what a TFLite model takes and gives, with no transposes (the layout the
    work is done in, so both give the same numbers).  ``overlap`` should be at least the model's
    receptive-field margin (``receptive_field_margin``); see the module docstring for the layout.
    """
    packed = np.asarray(packed, dtype=np.float32)
    if packed.ndim != 3:
        raise ValueError(f"packed RAW must be ({'H, W, C' if channels_last else 'C, H, W'}); got shape {packed.shape}")
    if not channels_last:
        def run_nhwc(x: np.ndarray) -> np.ndarray:
            return np.asarray(run_batch(x.transpose(0, 3, 1, 2))).transpose(0, 2, 3, 1)

        hwc = tiled_inference(packed.transpose(1, 2, 0), run_nhwc, tile, overlap, blend, batch, scale, align, True)
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))
    if batch < 1 or scale < 1:
        raise ValueError(f"batch and scale must be >= 1; got {batch}, {scale}")
    h, w, _ = packed.shape
    plan = plan_tiles(h, w, tile, overlap, blend, align)
    th, tw = plan.tile
    ph, pw = plan.padded_size
    pad = plan.pad_before
    padded = np.pad(packed, ((pad, ph - h - pad), (pad, pw - w - pad), (0, 0)), mode="reflect")
    # neighbours share tile - step pixels: the context band on each side, the cross-fade in between
    ramp_y = th - plan.starts_y[1] - 2 * overlap if len(plan.starts_y) > 1 else 0
    ramp_x = tw - plan.starts_x[1] - 2 * overlap if len(plan.starts_x) > 1 else 0
    out: np.ndarray | None = None
    weight = np.zeros((h, w), dtype=np.float32)
    pending: list[tuple[int, int, int, int, np.ndarray]] = []

    def flush() -> None:
        nonlocal out
        x = np.stack([p[4] for p in pending])
        y = np.asarray(run_batch(x), dtype=np.float32)
        if y.ndim != 4 or len(y) != len(x) or y.shape[1:3] != (scale * th, scale * tw):
            raise ValueError(f"run_batch returned shape {y.shape} (NHWC) for tiles {x.shape}; expected "
                             f"({len(x)}, {scale * th}, {scale * tw}, C) (scale {scale})")
        if out is None:
            out = np.zeros((scale * h, scale * w, y.shape[3]), dtype=np.float32)
        for (iy, ix, ty, tx, _), tile_out in zip(pending, y):
            wy = _window(th, overlap, ramp_y, iy > 0, iy < len(plan.starts_y) - 1)
            wx = _window(tw, overlap, ramp_x, ix > 0, ix < len(plan.starts_x) - 1)
            # the tile's rows/cols that fall inside the image, in tile and in image coordinates
            y0, y1 = max(ty, pad), min(ty + th, pad + h)
            x0, x1 = max(tx, pad), min(tx + tw, pad + w)
            wy, wx = wy[y0 - ty : y1 - ty], wx[x0 - tx : x1 - tx]
            weight[y0 - pad : y1 - pad, x0 - pad : x1 - pad] += np.outer(wy, wx)
            crop = tile_out[scale * (y0 - ty) : scale * (y1 - ty), scale * (x0 - tx) : scale * (x1 - tx)]
            target = out[scale * (y0 - pad) : scale * (y1 - pad), scale * (x0 - pad) : scale * (x1 - pad)]
            _accumulate(target, crop, wy, wx, scale)
        pending.clear()

    for item in _tiles(padded, plan):
        pending.append(item)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    assert out is not None
    if weight.min() <= 0:  # cannot happen with the plan above; guards future edits of the layout
        raise AssertionError("tile weights leave pixels uncovered")
    out.reshape(h, scale, w, scale, -1)[...] /= weight[:, None, :, None, None]  # in place, no copy
    return out


# --------------------------------------------------------------------------- TFLite adapter


def quantize_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float tensor -> the model input's dtype; integer inputs with the model's own scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    if dtype.type not in INTEGER_DTYPES:
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    q = x / scale  # in place from here on: round(x / scale + zero point), clipped to the dtype
    q += zero_point
    np.round(q, out=q)
    np.clip(q, info.min, info.max, out=q)
    return q.astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    """Model output -> float32 (into ``out`` when given); integer outputs with the model's own scale and
    zero point."""
    if np.dtype(detail["dtype"]).type not in INTEGER_DTYPES:
        if out is None:
            return y.astype(np.float32)
        out[...] = y
        return out
    scale, zero_point = detail["quantization"]
    result = np.subtract(y, np.float32(zero_point), out=out, dtype=np.float32)
    result *= np.float32(scale)
    return result


class TFLiteModel:
    """A fixed-shape TFLite model as a ``run_batch`` (NCHW float in and out): ``tile`` is its packed
    input size (h, w).  One interpreter serves every call: building one per call cost more than the
    tiles themselves on small models.  ``invoke_seconds`` adds up the time spent in ``invoke``."""

    def __init__(self, path: Path | str, num_threads: int = 2) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.num_threads = num_threads
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        shape = [int(d) for d in self.input["shape"]]
        if len(shape) != 4 or shape[3] != 4:
            raise ValueError(f"{self.path}: expected an NHWC packed-RAW input (batch, h, w, 4); got {shape}")
        self.batch = shape[0]
        self.tile = (shape[1], shape[2])
        self.invoke_seconds = 0.0
        self.invocations = 0

    def run_nhwc(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Exactly one model batch, float NHWC in, float NHWC out (into ``out`` when given)."""
        self.interpreter.set_tensor(self.input["index"], quantize_input(x, self.input))
        start = time.perf_counter()
        self.interpreter.invoke()
        self.invoke_seconds += time.perf_counter() - start
        self.invocations += 1
        return dequantize_output(self.interpreter.get_tensor(self.output["index"]), self.output, out)

    def nhwc(self, x: np.ndarray) -> np.ndarray:
        """Any number of NHWC tiles; the last group is filled up to the model's fixed batch and trimmed."""
        n = len(x)
        fill = (-n) % self.batch
        if fill:
            x = np.concatenate([x, np.repeat(x[-1:], fill, axis=0)])
        out = np.empty((len(x), *(int(d) for d in self.output["shape"][1:])), dtype=np.float32)
        for i in range(0, len(x), self.batch):
            self.run_nhwc(x[i : i + self.batch], out[i : i + self.batch])
        return out[:n]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Any number of NCHW tiles (the layout ``tiled_inference`` and the probes use by default)."""
        return np.transpose(self.nhwc(np.transpose(np.asarray(x, dtype=np.float32), (0, 2, 3, 1))), (0, 3, 1, 2))


def tflite_runner(path: Path | str, num_threads: int = 2) -> TFLiteModel:
    """The model at ``path`` as a ``run_batch`` whose ``tile``/``batch`` are its fixed NHWC input."""
    return TFLiteModel(path, num_threads)


def tiled_tflite(packed: np.ndarray, model: Path | str | TFLiteModel, overlap: int, blend: int = DEFAULT_BLEND,
                 num_threads: int = 2, align: int = 1) -> np.ndarray:
    """``tiled_inference`` through a TFLite model at its own input size, several batches per call."""
    if not isinstance(model, TFLiteModel):
        model = TFLiteModel(model, num_threads)
    out = tiled_inference(np.asarray(packed, dtype=np.float32).transpose(1, 2, 0), model.nhwc, model.tile, overlap,
                          blend=blend, batch=model.batch * max(1, TFLITE_TILES_PER_CALL // model.batch), align=align,
                          channels_last=True)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


# --------------------------------------------------------------------------- receptive field


def measure_receptive_field(
    run_batch: RunBatch, size: int | tuple[int, int], channels: int = 4, seeds: tuple[int, ...] = (0, 1),
    atol: float = 0.0, batch: int = 1,
) -> ReceptiveField:
    """The smallest radius ``R`` (packed pixels) such that redrawing every input pixel farther than ``R``
    from the centre leaves the centre's output unchanged: exactly what a tile's context must cover.

    Redrawing a whole region (not nudging one pixel) cannot be hidden by a ReLU that happens to be off
    or a max-pool that ignores one value, and it catches global pooling, which makes the centre depend
    on everything.  ``bounded`` is False when the margin exceeds a quarter of the probe: the probe
    cannot tell a wide field from a global one then, and tiles of that size would be mostly context.
    The test is monotone in ``R``, so a binary search needs ~log2(size) runs per seed.  Any change
    counts (``atol=0``): a float kernel computes an output from the same inputs bit-identically.
    Inputs are uniform in [0, 1] so quantized models see their calibrated range; ``batch`` fills a
    fixed model batch.
    """
    ph, pw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cy, cx = ph // 2, pw // 2
    largest = min(cy, cx, ph - 1 - cy, pw - 1 - cx) - 1  # beyond this the redrawn region is empty
    if largest < 0:
        raise ValueError(f"receptive-field probe of {ph}x{pw} packed pixels is too small (need at least 4x4)")
    rows, cols = np.mgrid[0:ph, 0:pw]
    distance = np.maximum(np.abs(rows - cy), np.abs(cols - cx))
    margin = 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        base = rng.uniform(0.0, 1.0, (channels, ph, pw)).astype(np.float32)
        other = rng.uniform(0.0, 1.0, (channels, ph, pw)).astype(np.float32)

        def run(x: np.ndarray) -> np.ndarray:
            fill = (-len(x)) % batch
            y = np.asarray(run_batch(np.concatenate([x, np.repeat(x[-1:], fill, axis=0)]) if fill else x))
            s = y.shape[2] // ph
            return y[: len(x), :, s * cy : s * (cy + 1), s * cx : s * (cx + 1)]

        reference = run(base[None])[0]

        def unchanged(radius: int, base: np.ndarray = base, other: np.ndarray = other,
                      reference: np.ndarray = reference) -> bool:
            moved = np.where(distance > radius, other, base)[None]
            return bool(np.abs(run(moved)[0] - reference).max() <= atol)

        if unchanged(largest):
            lo, hi = 0, largest  # the answer lies in [lo, hi]
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if unchanged(mid) else (mid + 1, hi)
        else:
            lo = largest + 1
        margin = max(margin, lo)
    # A global term (a mean over the image) may move the centre by less than a float step when only a
    # thin border is redrawn, so "found near the border" counts as unbounded, not just "at the border".
    bounded = margin <= largest // 2
    return ReceptiveField(margin=margin, bounded=bounded, probe=(ph, pw))

"""``ispdc process`` and ``ispdc verify``: run a hand-off bundle on a real camera file, check a bundle.

``process`` reads the file (``distill.data.camera``), packs the mosaic with the *file's* CFA pattern
into the channel order the model card names (so a GRBG sensor feeds a model trained on RGGB data the
same colours per channel), runs the bundle's ``model.tflite`` tile by tile (``compress.runtime.tiling``) and
writes an 8-bit sRGB PNG the size of the (even-cropped) mosaic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from compress.bundle.verify import BundleError, load_card
from compress.runtime.tiling import (
    DEFAULT_BLEND,
    TFLITE_TILES_PER_CALL,
    measure_receptive_field,
    plan_tiles,
    tflite_runner,
    tiled_inference,
)
from distill.data.bayer import PACKED_ORDER, pack_bayer
from distill.data.camera import read_bayer

PNG_COMPRESS_LEVEL = 1  # zlib level: 12 MP at the default 6 takes ~15 s to write here, at 1 ~4x less


@dataclass
class ProcessResult:
    """What ``process_file`` did, for the CLI's report and for tests."""

    output: Path
    info: dict[str, Any]
    model_pattern: str
    tile: tuple[int, int]
    tiles: int
    overlap: int
    overlap_source: str
    blend: int
    threads: int
    seconds: float
    image_size: tuple[int, int]  # (H, W) of the written PNG
    stats: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        info = self.info
        lines = [
            f"input   : {info['path']} ({info['format']}), {info['file_size'][1]}x{info['file_size'][0]} pixels, "
            f"CFA {info['pattern']}, black {_levels(info['black'])}, white {info['white']:g}",
        ]
        if info.get("cropped"):
            lines.append(f"          {info['cropped']}")
        if info.get("pattern_override"):
            lines.append(f"          {info['pattern_override']}")
        if info["pattern"] != self.model_pattern:
            lines.append(f"          packed as {info['pattern']} into the model's channels (trained on "
                         f"{self.model_pattern} data): same colour per channel")
        lines += [
            f"model   : {self.tiles} tiles of {self.tile[1]}x{self.tile[0]} packed pixels, overlap {self.overlap} "
            f"({self.overlap_source}), blend {self.blend}, {self.threads} thread(s)",
            f"output  : {self.output} {self.image_size[1]}x{self.image_size[0]} sRGB, mean {self.stats['mean']:.3f}, "
            f"std {self.stats['std']:.3f}",
            f"time    : {self.seconds:.2f} s",
        ]
        return "\n".join(lines)


def _levels(black: list[float]) -> str:
    return f"{black[0]:g}" if len(set(black)) == 1 else "/".join(f"{b:g}" for b in black)


def _channel_index(card: dict[str, Any], bundle: Path) -> list[int]:
    """Positions in ``PACKED_ORDER`` of the card's channel order (the model's input channels)."""
    order = (card.get("input") or {}).get("channel_order") or list(PACKED_ORDER)
    if sorted(order) != sorted(PACKED_ORDER):
        raise BundleError(f"{bundle}/model_card.json: input.channel_order {order} is not a permutation of "
                          f"{list(PACKED_ORDER)}")
    return [PACKED_ORDER.index(c) for c in order]


def process_file(
    input_path: Path | str, bundle: Path | str, output: Path | str, pattern: str | None = None,
    black: float | None = None, white: float | None = None, threads: int = 2, overlap: int | None = None,
    blend: int | None = None,
) -> ProcessResult:
    """Camera file -> 8-bit sRGB PNG through the bundle's TFLite model, in tiles.

    Bad input raises ``DataError`` (the camera file) or ``BundleError`` / ``ValueError`` (bundle, options).
    """
    bundle, output = Path(bundle), Path(output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"{output}: the output is written as PNG; give a .png file name")
    if threads < 1:
        raise ValueError(f"--threads must be >= 1; got {threads}")
    card = load_card(bundle)
    model_path = bundle / "model.tflite"
    if not model_path.is_file():
        raise BundleError(f"{bundle}: no model.tflite in the bundle")
    channels = _channel_index(card, bundle)
    start = time.perf_counter()
    mosaic, file_pattern, info = read_bayer(input_path, pattern, black, white)
    packed = np.ascontiguousarray(pack_bayer(mosaic, file_pattern).transpose(2, 0, 1)[channels])
    del mosaic
    try:
        model = tflite_runner(model_path, threads)
    except ValueError as exc:
        raise BundleError(f"{model_path}: cannot load the model ({exc})") from None
    th, tw = model.tile
    sizes = card.get("input_size") or {}
    if overlap is not None:
        source = "given"
    elif isinstance(sizes.get("overlap"), int):
        overlap = sizes["overlap"]
        source = ("model card: receptive-field margin" if sizes.get("receptive_field_margin") is not None
                  else "model card: global receptive field, tiling is approximate")
    else:  # older cards: measure on the model itself
        field_ = measure_receptive_field(model, model.tile, batch=model.batch)
        if field_.bounded:
            overlap, source = field_.margin, "measured receptive-field margin"
        else:
            overlap, source = min(th, tw) // 4, ("receptive field exceeds the tile (global pooling?): "
                                                   "tile/4, tiling is approximate")
    if overlap < 0:
        raise ValueError(f"--overlap must be >= 0; got {overlap}")
    room = min(th, tw) - 2 * overlap - 1  # the step between tiles must stay >= 1 pixel
    if room < 0:
        raise ValueError(f"--overlap {overlap} is too large for the model's {tw}x{th} input "
                         f"(at most {(min(th, tw) - 1) // 2})")
    if blend is None:
        blend = sizes["blend"] if isinstance(sizes.get("blend"), int) else DEFAULT_BLEND
    blend = min(blend, room)
    tiles = plan_tiles(packed.shape[1], packed.shape[2], model.tile, overlap, blend).count
    rgb = tiled_inference(packed, model, model.tile, overlap, blend=blend,
                          batch=model.batch * max(1, TFLITE_TILES_PER_CALL // model.batch))
    del packed
    np.clip(rgb, 0.0, 1.0, out=rgb)  # in place: a 12 MP float image is 144 MB
    rgb *= 255.0
    rgb += 0.5
    pixels = rgb.astype(np.uint8).transpose(1, 2, 0)
    del rgb
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(output, compress_level=PNG_COMPRESS_LEVEL)
    seconds = time.perf_counter() - start
    sample = pixels[::4, ::4]  # statistics for the report; a 1/16 sample is plenty and 16x cheaper
    stats = {"mean": float(sample.mean() / 255.0), "std": float(sample.std() / 255.0)}
    return ProcessResult(output=output, info=info, model_pattern=str((card.get("input") or {}).get("bayer_pattern")),
                         tile=(th, tw), tiles=tiles, overlap=overlap, overlap_source=source, blend=blend,
                         threads=threads, seconds=seconds, image_size=(pixels.shape[0], pixels.shape[1]), stats=stats)

"""``ispdc process``: run a hand-off bundle on a real camera file, the way the bundle's ``run_model.py`` does.

Everything after reading camera RAW is the bundle's own runner (``compress.bundle.reference_runner``,
shipped as ``run_model.py``): reading mosaics and packed RAW, the model-hash refusal, the choice of tile
or frame model, tiling and the image writer.  So ``ispdc process`` and ``python run_model.py`` give the
same PNG for the same input, byte for byte.  Only camera RAW (DNG, CR2, ...) is read here, through
LibRaw (``distill.data.camera``): the mosaic is packed with the *file's* CFA pattern, so a GRBG sensor
feeds a model trained on RGGB data the same colours per channel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.bundle.reference_runner import Rendered, load_card, read_input, render
from distill.data.bayer import pack_bayer
from distill.data.camera import read_bayer
from distill.data.rawio import ARRAY_SUFFIXES, MOSAIC_SUFFIXES, check_output, write_image


@dataclass
class ProcessResult:
    """What ``process_file`` did, for the CLI's report, tests and the speed benchmark."""

    output: Path
    info: dict[str, Any]
    model_pattern: str
    run: Rendered  # which model, tiles, overlap, blend, threads, interpreter time (its image is written and dropped)
    seconds: float
    image_size: tuple[int, int]  # (H, W) of the written image
    stats: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # read, tiles, invoke (inside tiles), write

    def report(self) -> str:
        info = self.info
        size = f"{info['file_size'][1]}x{info['file_size'][0]} pixels"
        if info.get("pattern"):
            what = f"{size}, CFA {info['pattern']}"
        else:
            what = f"packed RAW of {size}, channels {','.join(info['channel_order'])}"
        lines = [f"input   : {info['path']} ({info['format']}), {what}, black {_levels(info['black'])}, "
                 f"white {info['white']:g}"]
        lines += [f"          {note}" for note in (info.get("cropped"), info.get("pattern_override"),
                                                   *info.get("notes", [])) if note]
        if info.get("pattern") and info["pattern"] != self.model_pattern:
            lines.append(f"          packed as {info['pattern']} into the model's channels (trained on "
                         f"{self.model_pattern} data): same colour per channel")
        run, t = self.run, self.timings
        if run.warning:
            lines.append(f"          {run.warning}")
        lines += [
            f"model   : {run.model}: {run.tiles} tiles of {run.tile[1]}x{run.tile[0]} packed pixels, overlap "
            f"{run.overlap} ({run.overlap_source}), blend {run.blend}, {run.threads} thread(s)",
            f"output  : {self.output} {self.image_size[1]}x{self.image_size[0]} sRGB, mean {self.stats['mean']:.3f}, "
            f"std {self.stats['std']:.3f}",
            f"time    : {self.seconds:.2f} s (read {t['read']:.2f}, tiles {t['tiles']:.2f} of which interpreter "
            f"{t['invoke']:.2f}, write {t['write']:.2f})",
        ]
        return "\n".join(lines)


def _levels(black: list[float]) -> str:
    return f"{black[0]:g}" if len(set(black)) == 1 else "/".join(f"{b:g}" for b in black)


def read_any(path: Path | str, pattern: str | None = None, black: float | None = None, white: float | None = None,
             channel_order: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Any RAW file -> (packed ``(4, H, W)`` float32 in ``PACKED_ORDER``, info): camera RAW through LibRaw,
    everything else through the bundle runner's reader."""
    path = Path(path)
    if path.suffix.lower() in (*MOSAIC_SUFFIXES, *ARRAY_SUFFIXES) or not path.is_file():
        return read_input(path, pattern, black, white, channel_order)
    mosaic, file_pattern, info = read_bayer(path, pattern, black, white)
    info["notes"] = []
    packed = np.ascontiguousarray(pack_bayer(mosaic, file_pattern).transpose(2, 0, 1))
    return packed, info


def process_file(
    input_path: Path | str, bundle: Path | str, output: Path | str, pattern: str | None = None,
    black: float | None = None, white: float | None = None, threads: int = 2, overlap: int | None = None,
    blend: int | None = None, channel_order: str | None = None, model: str = "auto", allow_modified: bool = False,
) -> ProcessResult:
    """RAW file -> 8-bit sRGB image through the bundle, in tiles.

    Bad input raises ``DataError`` (the camera file), ``RawFileError`` or ``BundleError`` / ``ValueError``
    (bundle, options, a model whose hash is not the card's).
    """
    bundle, output = Path(bundle), Path(output)
    check_output(output)
    card = load_card(bundle)
    start = time.perf_counter()
    packed, info = read_any(input_path, pattern, black, white, channel_order)
    read_s = time.perf_counter() - start
    done = render(packed, bundle, card, model, threads, overlap, blend, allow_modified)
    del packed
    output.parent.mkdir(parents=True, exist_ok=True)
    write_start = time.perf_counter()
    pixels = write_image(done.rgb, output)
    done.rgb = np.empty((0, 0, 0), dtype=np.float32)  # written: 144 MB at 12 MP need not outlive this call
    end = time.perf_counter()
    sample = pixels[::4, ::4]  # statistics for the report; a 1/16 sample is plenty and 16x cheaper
    stats = {"mean": float(sample.mean() / 255.0), "std": float(sample.std() / 255.0)}
    timings = {"read": read_s, "tiles": done.tile_seconds, "invoke": done.invoke_seconds, "write": end - write_start}
    return ProcessResult(output=output, info=info, model_pattern=str((card.get("input") or {}).get("bayer_pattern")),
                         run=done, seconds=end - start, image_size=(pixels.shape[0], pixels.shape[1]), stats=stats,
                         timings=timings)

#!/usr/bin/env python3
"""Reference runner for an ispdc hand-off bundle: a RAW file of any size in, an sRGB image out.

    pip install numpy ai-edge-litert            # (pillow too, to read PNG/TIFF mosaics)
    python run_model.py                         # golden check: must print OK
    python run_model.py --input bayer.pgm --pattern GRBG --black 64 --white 1023 --output photo.png
    python run_model.py --input packed.npy --output photo.png   # packed RAW H x W x 4 or 4 x H x W

Input: a Bayer mosaic (.npy 2-D, 16-bit PNG / TIFF / PGM: give --pattern, --black, --white) or packed
RAW in .npy / .npz (--channel-order, else the .npz's ``channel_order``, else B,Gb,R,Gr as PyNET/MAI
store it; integer data needs --black/--white or the .npz's ``black_level``/``white_level``; float data
already in [0, 1] needs none).  The image is tiled with the card's overlap and blend (``ispdc_tiling.py``),
through ``model_frame.tflite`` when the bundle has one and the image is at least its size, else
``model.tflite`` (``--model tile|frame`` overrides), one interpreter for all tiles.  Output: 8-bit sRGB
PNG or PPM, or float32 .npy.  A model whose SHA-256 is not the card's is refused (exit 2) unless
``--allow-modified-model`` is given.  ``ispdc process`` runs this same code: same input, same PNG.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if (HERE / "ispdc_tiling.py").is_file():  # inside a bundle: the copies shipped beside this file
    sys.path.insert(0, str(HERE))
    import ispdc_bayer as bayer
    import ispdc_rawio as rawio
    import ispdc_tiling as tiling
else:  # in the ispdc source tree, where ``ispdc process`` imports this module
    from compress.runtime import tiling
    from distill.data import bayer, rawio

TILE_MODEL = "model.tflite"
MODEL_CHOICES = ("auto", "tile", "frame")


class BundleError(ValueError):
    """A bundle that cannot be used as it is (missing folder, unreadable card, changed model); names the path."""


def load_card(bundle: Path | str) -> dict[str, Any]:
    """The bundle's ``model_card.json``; a missing folder or unreadable card is a ``BundleError``."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder")
    path = bundle / "model_card.json"
    try:
        card = json.loads(path.read_text())
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the model card ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise BundleError(f"{path}: the model card must be a JSON object")
    return card


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file: the card's hashes let anyone check a model is the one that was scored."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_sha256(card: dict[str, Any], name: str) -> str | None:
    """The hash the card records for the bundle file ``name`` (``files_sha256``, or ``model_sha256``)."""
    expected = (card.get("files_sha256") or {}).get(name)
    if expected is None and name == TILE_MODEL:
        expected = card.get("model_sha256")
    return None if expected is None else str(expected).lower()


def check_model_hash(bundle: Path, card: dict[str, Any], name: str, allow_modified: bool = False) -> str | None:
    """Refuse a model file whose SHA-256 is not the card's; with ``allow_modified`` return a warning instead."""
    expected = card_sha256(card, name)
    if expected is None:
        return f"note: the card records no SHA-256 for {name}; it runs unchecked"
    actual = file_sha256(bundle / name)
    if actual == expected:
        return None
    problem = (f"{bundle / name}: SHA-256 {actual[:16]}... is not the card's {expected[:16]}... "
               f"(the model file was changed)")
    if not allow_modified:
        raise BundleError(f"{problem}; refusing to run it (--allow-modified-model runs it anyway)")
    return f"WARNING: {problem}; running it because --allow-modified-model was given"


def channel_index(card: dict[str, Any]) -> list[int]:
    """Positions in ``PACKED_ORDER`` of the card's channel order (the model's input channels)."""
    order = (card.get("input") or {}).get("channel_order") or list(bayer.PACKED_ORDER)
    if sorted(order) != sorted(bayer.PACKED_ORDER):
        raise BundleError(f"model_card.json: input.channel_order {order} is not a permutation of "
                          f"{list(bayer.PACKED_ORDER)}")
    return [bayer.PACKED_ORDER.index(c) for c in order]


# --------------------------------------------------------------------------- reading


def _channel_order(path: Path, given: str | list[str] | None) -> list[str]:
    names = given.split(",") if isinstance(given, str) else list(given or [])
    canonical = {c.lower(): c for c in bayer.PACKED_ORDER}
    order = [canonical.get(str(n).strip().lower(), str(n).strip()) for n in names]
    if sorted(order) != sorted(bayer.PACKED_ORDER):
        raise rawio.RawFileError(f"{path}: channel order {','.join(map(str, names))} is not a permutation of "
                                 f"{','.join(bayer.PACKED_ORDER)}")
    return order


def _levels(path: Path, data: np.ndarray, black: Any, white: Any) -> tuple[np.ndarray, float] | None:
    """(black per value of the last axis broadcast, white); None for float data already in [0, 1]."""
    if black is None and white is None:
        if data.dtype.kind == "f":
            low, high = float(data.min()), float(data.max())
            if low >= 0.0 and high <= 1.0:
                return None
            raise rawio.RawFileError(f"{path}: float data in [{low:g}, {high:g}] is not normalised; give --black "
                                     f"and --white")
        raise rawio.RawFileError(f"{path}: {data.dtype} RAW data needs its levels; give --black and --white "
                                 f"(or black_level / white_level in an .npz)")
    if black is None or white is None:
        raise rawio.RawFileError(f"{path}: give both --black and --white (only {'black' if white is None else 'white'}"
                                 f" is known)")
    levels = np.atleast_1d(np.asarray(black, dtype=np.float32))
    if levels.size not in (1, 4) or float(white) <= float(levels.max()):
        raise rawio.RawFileError(f"{path}: levels black {levels.tolist()} / white {white} are not usable (one or four "
                                 f"black levels below the white level)")
    return levels, float(white)


def read_input(path: Path | str, pattern: str | None = None, black: float | None = None, white: float | None = None,
               channel_order: str | list[str] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """A mosaic or packed RAW file -> (packed ``(4, H, W)`` float32 in [0, 1], channels ``PACKED_ORDER``; info).

    Four black levels are per 2x2 CFA site (row-major) for a mosaic, per channel (the file's order) for
    packed RAW.  An odd mosaic loses its last row/column (the CFA phase is kept) and ``info`` says so.
    """
    path = Path(path)
    if not path.is_file():
        raise rawio.RawFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in rawio.ARRAY_SUFFIXES:
        data, meta = rawio.read_array(path)
    elif suffix in rawio.MOSAIC_SUFFIXES:
        data, meta = rawio.read_mosaic(path), {}
    else:
        raise rawio.RawFileError(f"{path}: not a format read here; give {rawio.FORMATS} (camera RAW such as DNG "
                                 f"through `ispdc process`)")
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    info: dict[str, Any] = {"path": str(path), "format": suffix[1:], "cropped": None, "notes": []}
    black = black if black is not None else meta.get("black_level")
    white = white if white is not None else meta.get("white_level")
    if data.ndim == 2:
        pattern = (pattern or meta.get("cfa_pattern") or "").upper()
        missing = [f"--{name}" for name, value in (("pattern", pattern or None), ("black", black), ("white", white))
                   if value is None and (name == "pattern" or data.dtype.kind != "f")]
        if missing:
            raise rawio.RawFileError(f"{path}: a {suffix[1:].upper()} mosaic carries no metadata; give "
                                     f"{', '.join(missing)} (e.g. --pattern GRBG --black 25 --white 1023)")
        if pattern not in bayer.PATTERNS:
            raise rawio.RawFileError(f"{path}: unknown Bayer pattern {pattern!r}; expected one of "
                                     f"{', '.join(bayer.PATTERNS)}")
        h, w = data.shape
        info["file_size"] = [h, w]
        data = data[: h - h % 2, : w - w % 2]
        if data.size == 0:
            raise rawio.RawFileError(f"{path}: mosaic of {h}x{w} pixels is too small (need at least 2x2)")
        if data.shape != (h, w):
            info["cropped"] = f"cropped {h}x{w} to {data.shape[0]}x{data.shape[1]} (a 2x2 CFA tile needs even sizes)"
        offsets = bayer.colour_offsets(pattern)
        levels = _levels(path, data, black, white)
        packed = np.stack([data[dy::2, dx::2] for dy, dx in (offsets[c] for c in bayer.PACKED_ORDER)])
        if levels is not None and levels[0].size == 4:  # per site (row-major) -> per packed channel
            levels = (levels[0][[2 * dy + dx for dy, dx in (offsets[c] for c in bayer.PACKED_ORDER)]], levels[1])
        info["pattern"] = pattern
    elif data.ndim == 3 and 4 in (data.shape[0], data.shape[-1]):
        chw = data.shape[-1] != 4
        packed_any = data if chw else data.transpose(2, 0, 1)
        if channel_order is None and meta.get("channel_order") is None:
            info["notes"].append("channel order not given: B,Gb,R,Gr assumed (the PyNET / MAI order)")
        order = _channel_order(path, channel_order or meta.get("channel_order") or list(bayer.PACKED_ORDER))
        levels = _levels(path, packed_any, black, white)
        if levels is not None and levels[0].size == 4:
            levels = (levels[0][[order.index(c) for c in bayer.PACKED_ORDER]], levels[1])
        packed = packed_any[[order.index(c) for c in bayer.PACKED_ORDER]]
        info["file_size"] = [2 * packed.shape[1], 2 * packed.shape[2]]
        info["channel_order"] = order
        info["pattern"] = None
    else:
        raise rawio.RawFileError(f"{path}: an array of shape {data.shape} is neither a 2-D Bayer mosaic nor packed "
                                 f"RAW (H x W x 4 or 4 x H x W)")
    if levels is None:
        result = np.ascontiguousarray(packed, dtype=np.float32)
        info["black"], info["white"] = [0.0] * 4, 1.0
        info["notes"].append("float data in [0, 1]: used as it is (no levels)")
    else:
        low = np.broadcast_to(levels[0], (4,)).astype(np.float32)[:, None, None]
        result = np.clip((packed.astype(np.float32) - low) / (np.float32(levels[1]) - low), 0.0, 1.0)
        info["black"], info["white"] = [float(b) for b in low.ravel()], levels[1]
    info["size"] = [2 * result.shape[1], 2 * result.shape[2]]
    return result, info


# --------------------------------------------------------------------------- running


def choose_model(bundle: Path, card: dict[str, Any], packed_hw: tuple[int, int], which: str = "auto") -> str:
    """The bundle file to tile with: the frame model when the packed image is at least its input size in
    both dimensions (or ``which == "frame"``), else the tile model."""
    if which not in MODEL_CHOICES:
        raise BundleError(f"--model must be one of {', '.join(MODEL_CHOICES)}; got {which!r}")
    frame = card.get("frame") or {}
    name = frame.get("file")
    if which == "tile" or (which == "auto" and not name):
        return TILE_MODEL
    if not name or not (bundle / name).is_file():
        if which == "frame":
            raise BundleError(f"{bundle}: no frame model in the bundle (card frame.file: {name})")
        return TILE_MODEL
    size = frame.get("packed_hw")
    if size is None:
        size = tiling.TFLiteModel(bundle / name, 1).tile
    fits = packed_hw[0] >= int(size[0]) and packed_hw[1] >= int(size[1])
    return name if which == "frame" or fits else TILE_MODEL


def tiling_options(card: dict[str, Any], model: Any, overlap: int | None, blend: int | None) -> tuple[int, str, int]:
    """(overlap, where it came from, blend): the option, else the card's ``input_size``, else measured."""
    th, tw = model.tile
    sizes = card.get("input_size") or {}
    if overlap is not None:
        source = "given"
    elif isinstance(sizes.get("overlap"), int):
        overlap = sizes["overlap"]
        source = ("model card: receptive-field margin" if sizes.get("receptive_field_margin") is not None
                  else "model card: global receptive field, tiling is approximate")
    else:  # older cards: measure on the model itself
        found = tiling.measure_receptive_field(model, model.tile, batch=model.batch)
        if found.bounded:
            overlap, source = found.margin, "measured receptive-field margin"
        else:
            overlap = min(th, tw) // 4
            source = "receptive field exceeds the tile (global pooling?): tile/4, tiling is approximate"
    assert overlap is not None
    if overlap < 0:
        raise ValueError(f"--overlap must be >= 0; got {overlap}")
    room = min(th, tw) - 2 * overlap - 1  # the step between tiles must stay >= 1 pixel
    if room < 0:
        raise ValueError(f"--overlap {overlap} is too large for the model's {tw}x{th} input "
                         f"(at most {(min(th, tw) - 1) // 2})")
    if blend is None:
        blend = sizes["blend"] if isinstance(sizes.get("blend"), int) else tiling.DEFAULT_BLEND
    return overlap, source, min(blend, room)


class Rendered:
    """The model's output for one image and how it was tiled (for reports and benchmarks).  A plain class:
    MLflow's pyfunc loads this file without registering it as a module, which a dataclass needs."""

    def __init__(self, rgb: np.ndarray, model: str, tile: tuple[int, int], tiles: int, overlap: int,
                 overlap_source: str, blend: int, threads: int, invoke_seconds: float, tile_seconds: float,
                 warning: str | None) -> None:
        self.rgb = rgb  # (2H, 2W, 3) float32
        self.model, self.tile, self.tiles = model, tile, tiles
        self.overlap, self.overlap_source, self.blend, self.threads = overlap, overlap_source, blend, threads
        self.invoke_seconds, self.tile_seconds, self.warning = invoke_seconds, tile_seconds, warning


def run(model_path: Path, packed_nhwc: np.ndarray, num_threads: int = 2) -> np.ndarray:
    """Packed RAW already at the model's input size, float NHWC in, float sRGB NHWC out (no tiling)."""
    model = tiling.TFLiteModel(model_path, num_threads)
    return np.transpose(model(np.transpose(np.asarray(packed_nhwc, dtype=np.float32), (0, 3, 1, 2))), (0, 2, 3, 1))


def render(packed: np.ndarray, bundle: Path | str, card: dict[str, Any], model: str = "auto", threads: int = 2,
           overlap: int | None = None, blend: int | None = None, allow_modified: bool = False) -> Rendered:
    """Packed RAW ``(4, H, W)`` (``PACKED_ORDER``, [0, 1]) -> sRGB ``(2H, 2W, 3)`` through the bundle, in tiles."""
    bundle = Path(bundle)
    if threads < 1:
        raise ValueError(f"--threads must be >= 1; got {threads}")
    inputs = np.ascontiguousarray(packed[channel_index(card)].transpose(1, 2, 0))  # NHWC, as the model takes it
    name = choose_model(bundle, card, (packed.shape[1], packed.shape[2]), model)
    if not (bundle / name).is_file():
        raise BundleError(f"{bundle}: no {name} in the bundle")
    warning = check_model_hash(bundle, card, name, allow_modified)
    try:
        runner = tiling.TFLiteModel(bundle / name, threads)
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{bundle / name}: cannot load the model ({exc})") from None
    overlap, source, blend = tiling_options(card, runner, overlap, blend)
    count = tiling.plan_tiles(inputs.shape[0], inputs.shape[1], runner.tile, overlap, blend).count
    runner.invoke_seconds = 0.0  # the receptive-field probe above does not count
    start = time.perf_counter()
    rgb = tiling.tiled_inference(inputs, runner.nhwc, runner.tile, overlap, blend=blend, channels_last=True,
                                 batch=runner.batch * max(1, tiling.TFLITE_TILES_PER_CALL // runner.batch))
    return Rendered(rgb, name, runner.tile, count, overlap, source, blend, threads, runner.invoke_seconds,
                    time.perf_counter() - start, warning)


def golden_diff(bundle: Path, card: dict[str, Any], threads: int = 2) -> tuple[float, float]:
    """(max |model(golden_input) - golden_output|, the card's tolerance) for ``model.tflite``."""
    golden_in = np.load(bundle / "golden_input.npy")
    golden_out = np.load(bundle / "golden_output.npy")
    model = tiling.TFLiteModel(bundle / TILE_MODEL, threads)
    if golden_in.ndim != 4 or golden_in.shape[1:] != tuple(model.input["shape"][1:]) or len(golden_in) % model.batch:
        raise ValueError(f"golden input {golden_in.shape} does not fit the model input {tuple(model.input['shape'])}")
    result = np.concatenate([model.run_nhwc(golden_in[i : i + model.batch]) for i in range(0, len(golden_in),
                                                                                             model.batch)])
    if result.shape != golden_out.shape:
        raise ValueError(f"golden output shape {golden_out.shape} != model output {result.shape}")
    tolerance = (card.get("golden") or {}).get("tolerance")
    if not isinstance(tolerance, (int, float)):
        raise BundleError(f"{bundle}/model_card.json: no numeric golden.tolerance")
    return float(np.abs(result - golden_out).max()), float(tolerance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--input", type=Path, help=f"RAW file: {rawio.FORMATS}")
    parser.add_argument("--output", type=Path, default=Path("output.png"), help="sRGB .png / .ppm / .npy")
    parser.add_argument("--pattern", help="CFA order of a mosaic, e.g. GRBG")
    parser.add_argument("--black", type=float, help="black level")
    parser.add_argument("--white", type=float, help="white level")
    parser.add_argument("--channel-order", help="channels of packed RAW, e.g. B,Gb,R,Gr (the default)")
    parser.add_argument("--model", default="auto", choices=MODEL_CHOICES, help="tile model, frame model, or auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overlap", type=int, help="tile context in packed pixels (default: the card's)")
    parser.add_argument("--allow-modified-model", action="store_true", help="run a model whose hash is not the card's")
    args = parser.parse_args(argv)
    try:
        card = load_card(HERE)
        if args.input is None:
            warning = check_model_hash(HERE, card, TILE_MODEL, args.allow_modified_model)
            if warning:
                print(warning, file=sys.stderr)
            diff, tolerance = golden_diff(HERE, card, args.threads)
            print(f"golden check: max |diff| = {diff:.6f} (tolerance {tolerance})")
            if not diff <= tolerance:
                print("FAIL: this runtime does not reproduce the golden output", file=sys.stderr)
                return 1
            print("OK")
            return 0
        rawio.check_output(args.output)
        packed, info = read_input(args.input, args.pattern, args.black, args.white, args.channel_order)
        done = render(packed, HERE, card, args.model, args.threads, args.overlap, None, args.allow_modified_model)
    except (ValueError, OSError) as exc:
        print(f"run_model.py: error: {exc}", file=sys.stderr)
        return 2
    if done.warning:
        print(done.warning, file=sys.stderr)
    for note in [info["cropped"], *info["notes"]]:
        if note:
            print(f"note: {note}")
    rawio.write_image(done.rgb, args.output)
    print(f"wrote {args.output}: {info['size'][1]}x{info['size'][0]} sRGB from {done.model}, {done.tiles} tiles, "
          f"overlap {done.overlap}, blend {done.blend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The bundle's runtime side: ``run_model.py`` gives the same PNG as ``ispdc process``, any RAW goes in,
a tampered card field or model is named or refused, and the bundle commands import neither torch nor
TensorFlow.

The bundle is the tiny untrained INT8 Smallnet (tests/conftest.py: batch 2, 32 x 32 packed input).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from distill.data.bayer import PACKED_ORDER, pack_bayer, unpack_bayer
from distill.data.rawio import read_mosaic
from recipes.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
import bundle_fixture  # noqa: E402
from bundle_fixture import build_int8_bundle  # noqa: E402

bundle, bundle_copy = bundle_fixture.bundle, bundle_fixture.bundle_copy  # the shared fixtures

REAL_RAW = Path(__file__).resolve().parents[4] / "shared" / "data" / "real-raw"
ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow  # every test here needs the shared onnx2tf conversion


def run_model(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The bundle's own run_model.py, as an app team runs it (from another folder, its own ispdc_*.py)."""
    return subprocess.run([sys.executable, str(bundle / "run_model.py"), *args], capture_output=True, text=True,
                          cwd=bundle.parent, timeout=300)


def edit(bundle: Path, section: str, key: str, value: object) -> None:
    path = bundle / "model_card.json"
    card = json.loads(path.read_text())
    card[section][key] = value
    path.write_text(json.dumps(card))


def change_one_weight_byte(model: Path) -> None:
    """One byte of the largest constant buffer (a conv's int8 weights) changed: the model still loads."""
    from ai_edge_litert.tools import flatbuffer_utils

    m = flatbuffer_utils.read_model(str(model))
    largest = max((b for b in m.buffers if b.data is not None), key=lambda b: len(b.data))
    data = np.asarray(largest.data, dtype=np.uint8).copy()
    data[0] ^= 0x01
    largest.data = data
    flatbuffer_utils.write_model(m, str(model))


def mosaic_png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(25, 1024, (h, w)).astype(np.uint16)).save(path)
    return path


# --- integrity ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("input", "scale", 0.5, "input.scale: card 0.5, model 0.00392"),
    ("output", "zero_point", 3, "output.zero_point: card 3, model -128"),
    ("input", "name", "pixels", "input.name: card pixels, model "),
    ("input", "shape", [1, 64, 64, 4], "input.shape: card [1, 64, 64, 4], model [2, 32, 32, 4]"),
    ("input", "dtype", "float32", "input.dtype: card float32, model int8"),
    ("input", "channel_order", ["R", "Gb", "B", "Gr"], "input.channel_order: card ['R', 'Gb', 'B', 'Gr'], the golden"),
    ("output", "range", [0, 255], "output.range: card [0, 255], golden output spans"),
])
def test_verify_names_each_tampered_field(bundle_copy: Path, capsys: pytest.CaptureFixture[str], section: str,
                                          key: str, value: object, expected: str) -> None:
    edit(bundle_copy, section, key, value)
    assert main(["verify", str(bundle_copy)]) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED: {expected}"), failed


def test_verify_checks_the_readme_hash(bundle_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = bundle_copy / "README.md"
    card = json.loads((bundle_copy / "model_card.json").read_text())
    readme.write_text(readme.read_text().replace(card["model_sha256"], "0" * 64))
    assert main(["verify", str(bundle_copy)]) == 1
    assert "FAILED: README.md: model.tflite SHA-256 0000000000000000..., card" in capsys.readouterr().err


def test_changed_model_is_named_and_refused(bundle_copy: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    change_one_weight_byte(bundle_copy / "model.tflite")
    assert main(["verify", str(bundle_copy)]) == 1
    assert "FAILED: model_sha256 / files_sha256[model.tflite]: card " in capsys.readouterr().err
    src = mosaic_png(tmp_path / "m.png", 40, 40)
    args = ["process", str(src), "--bundle", str(bundle_copy), "-o", str(tmp_path / "o.png"), "--pattern", "RGGB",
            "--black", "25", "--white", "1023"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the card's" in err and "--allow-modified-model" in err
    assert not (tmp_path / "o.png").exists()
    assert main([*args, "--allow-modified-model"]) == 0
    assert "WARNING: " in capsys.readouterr().out and (tmp_path / "o.png").is_file()
    refused = run_model(bundle_copy)
    assert refused.returncode == 2 and "is not the card's" in refused.stderr, refused.stderr
    allowed = run_model(bundle_copy, "--allow-modified-model")
    assert "WARNING" in allowed.stderr and "golden check: max |diff|" in allowed.stdout  # it ran


# --- run_model.py == ispdc process ----------------------------------------------------------------------


def test_run_model_golden_check_and_same_png_as_process(bundle: Path, tmp_path: Path) -> None:
    golden = run_model(bundle)
    assert golden.returncode == 0 and golden.stdout.strip().endswith("OK"), golden.stderr
    big = mosaic_png(tmp_path / "big.png", 1024, 1024, seed=3)  # the check: 841 tiles
    odd = mosaic_png(tmp_path / "odd.png", 131, 154, seed=4)  # cropped to 130x154
    for src, suffix in ((big, ".png"), (odd, ".png"), (odd, ".ppm"), (odd, ".npy")):
        ours, theirs = tmp_path / f"process_{src.stem}{suffix}", tmp_path / f"runner_{src.stem}{suffix}"
        levels = ["--pattern", "GBRG", "--black", "25", "--white", "1023"]
        assert main(["process", str(src), "--bundle", str(bundle), "-o", str(ours), *levels]) == 0
        done = run_model(bundle, "--input", str(src), "--output", str(theirs), *levels)
        assert done.returncode == 0, done.stderr
        assert ours.read_bytes() == theirs.read_bytes(), (src.name, suffix)
    for name, size in (("process_big.png", (1024, 1024)), ("process_odd.png", (154, 130))):
        with Image.open(tmp_path / name) as img:
            assert img.size == size and img.mode == "RGB"


def test_frame_model_is_chosen_by_size(tiny_smallnet_tflite, tmp_path: Path,  # noqa: ANN001
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A frame model (here the same INT8 file under its own name, input 32x32 packed) is used when the image
    is at least its size, else the tile model; --model overrides; verify checks it like the tile model."""
    model = tiny_smallnet_tflite.int8
    bundle = build_int8_bundle(model, tmp_path / "b", {"model_frame.tflite": model},
                               {"frame": {"file": "model_frame.tflite", "packed_hw": [32, 32], "output_hw": [64, 64],
                                          "built_by": "resize", "evaluation": "none (test)", "threads": 2,
                                          "latency_runs": 1, "quality": {}, "latency_ms": {}}})
    assert main(["verify", str(bundle)]) == 0
    assert "model_frame.tflite sha256 matches" in capsys.readouterr().out
    small, large = mosaic_png(tmp_path / "s.png", 40, 40), mosaic_png(tmp_path / "l.png", 100, 90)
    for src, flag, expected in ((small, "auto", "model.tflite:"), (large, "auto", "model_frame.tflite:"),
                                (large, "tile", "model.tflite:")):
        assert main(["process", str(src), "--bundle", str(bundle), "-o", str(tmp_path / "o.png"), "--pattern",
                     "RGGB", "--black", "25", "--white", "1023", "--model", flag]) == 0
        assert f"model   : {expected}" in capsys.readouterr().out
    shutil.copyfile(tiny_smallnet_tflite.fp32, bundle / "model_frame.tflite")
    assert main(["verify", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert "FAILED: frame: model_frame.tflite input.dtype float32, model.tflite int8" in err
    assert "files_sha256[model_frame.tflite]" in err


# --- any RAW in ----------------------------------------------------------------------------------------


def test_packed_npy_npz_and_tiff_give_the_mosaics_image(bundle: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The same scene as a PNG mosaic, a 16-bit TIFF, packed HxWx4 .npy (MAI order), a 4xHxW float .npy and an
    .npz with its own channel order and levels: one image."""
    packed = np.random.default_rng(1).integers(25, 1024, (30, 26, 4)).astype(np.uint16)  # B, Gb, R, Gr
    Image.fromarray(unpack_bayer(packed, "GRBG")).save(tmp_path / "m.png")
    tifffile.imwrite(tmp_path / "m.tif", unpack_bayer(packed, "GRBG"))
    np.save(tmp_path / "p.npy", packed)
    np.save(tmp_path / "f.npy", ((packed.astype(np.float32) - 25) / 998).transpose(2, 0, 1))
    order = [2, 3, 0, 1]  # R, Gr, B, Gb
    np.savez(tmp_path / "p.npz", raw=packed[..., order], channel_order=np.array(["R", "Gr", "B", "Gb"]),
             black_level=np.float32(25), white_level=np.float32(1023))
    levels = ["--black", "25", "--white", "1023"]
    runs = {"m.png": ["--pattern", "GRBG", *levels], "m.tif": ["--pattern", "GRBG", *levels], "p.npy": levels,
            "f.npy": [], "p.npz": []}
    images = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.png"
        assert main(["process", str(tmp_path / name), "--bundle", str(bundle), "-o", str(out), *extra]) == 0, name
        report = capsys.readouterr().out
        assert ("B,Gb,R,Gr assumed" in report) == (name in ("p.npy", "f.npy")), report
        with Image.open(out) as img:
            images[name] = np.asarray(img)
    for name, image in images.items():
        difference = np.abs(image.astype(int) - images["m.png"]).max()
        assert difference <= (1 if name == "f.npy" else 0), name  # float input: rounding of the levels


@pytest.mark.skipif(not REAL_RAW.is_dir(), reason=f"real RAW samples not found at {REAL_RAW}")
def test_real_phone_raw_packed_as_npy_goes_through_one_command(bundle: Path, tmp_path: Path) -> None:
    """A real GRBG capture packed the MAI / Zurich way (H/2 x W/2 x 4 uint16, B, Gb, R, Gr) runs with one
    command and gives exactly the image of the mosaic it came from."""
    mosaic = read_mosaic(REAL_RAW / "bayer_small.png")
    np.save(tmp_path / "phone.npy", pack_bayer(mosaic, "GRBG"))
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "ispdc"), "process", str(tmp_path / "phone.npy"), "--bundle",
                           str(bundle), "-o", str(tmp_path / "npy.png"), "--black", "25", "--white", "1023"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "packed RAW of 256x344 pixels, channels B,Gb,R,Gr" in done.stdout
    assert main(["process", str(REAL_RAW / "bayer_small.png"), "--bundle", str(bundle), "-o",
                 str(tmp_path / "png.png"), "--pattern", "GRBG", "--black", "25", "--white", "1023"]) == 0
    assert (tmp_path / "npy.png").read_bytes() == (tmp_path / "png.png").read_bytes()


def test_unreadable_inputs_are_one_line(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a raw file")
    np.save(tmp_path / "rgb.npy", np.zeros((8, 8, 3), dtype=np.uint16))
    np.save(tmp_path / "ints.npy", np.zeros((8, 8, 4), dtype=np.uint16))
    cases = {"notes.txt": "the formats read are", "rgb.npy": "neither a 2-D Bayer mosaic nor packed RAW",
             "ints.npy": "give --black and --white"}
    for name, message in cases.items():
        assert main(["process", str(tmp_path / name), "--bundle", str(bundle), "-o", str(tmp_path / "o.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ispdc: error: {tmp_path / name}") and message in err and err.count("\n") == 1, err


# --- fast start -----------------------------------------------------------------------------------------


def test_process_and_verify_import_neither_torch_nor_tensorflow(bundle: Path, tmp_path: Path) -> None:
    mosaic_png(tmp_path / "m.png", 40, 40)
    code = (f"import sys\nfrom recipes.cli import main\n"
            f"assert main(['verify', {str(bundle)!r}]) == 0\n"
            f"assert main(['process', {str(tmp_path / 'm.png')!r}, '--bundle', {str(bundle)!r}, '-o', "
            f"{str(tmp_path / 'o.png')!r}, '--pattern', 'RGGB', '--black', '0', '--white', '1023']) == 0\n"
            f"print('HEAVY', sorted(m for m in ('torch', 'tensorflow', 'torchvision', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout
    assert list(PACKED_ORDER) == ["B", "Gb", "R", "Gr"]

"""``ispdc process`` (camera file -> bundle -> PNG) on both real RAW samples and a DNG, and ``ispdc verify``
catching missing files, a changed hash, tampered weights and a truncated model.

The bundle is a tiny untrained Smallnet (tests/conftest.py: INT8, batch 2, 32 x 32 packed input) with
a card shaped like the handoff stage's.  With untrained weights "plausible output" means: a valid
8-bit RGB PNG of exactly the mosaic's size whose pixels are not all equal.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from distill.data.bayer import unpack_bayer
from recipes.cli import main

sys.path.insert(0, str(Path(__file__).parent))
import bundle_fixture  # noqa: E402

bundle, bundle_copy = bundle_fixture.bundle, bundle_fixture.bundle_copy  # the shared fixtures

REAL_RAW = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-raw"
needs_real_raw = pytest.mark.skipif(not REAL_RAW.is_dir(), reason=f"real RAW samples not found at {REAL_RAW}")
pytestmark = pytest.mark.slow  # every test here needs the shared onnx2tf conversion


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


def edit_card(bundle: Path, **changes: object) -> None:
    """Set (or with None remove) top-level card keys."""
    path = bundle / "model_card.json"
    card = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    path.write_text(json.dumps(card))



# --- process -------------------------------------------------------------------------------------------


@needs_real_raw
@pytest.mark.parametrize(("name", "size"), [("bayer_small.png", (344, 256)), ("bayer_2592_304.pgm", (304, 2592))])
def test_process_real_captures(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                               size: tuple[int, int]) -> None:
    out = tmp_path / "out.png"
    code = main(["process", str(REAL_RAW / name), "--bundle", str(bundle), "-o", str(out), "--pattern", "GRBG",
                 "--black", "25", "--white", "1023", "--threads", "1"])
    report = capsys.readouterr().out
    assert code == 0, report
    pixels = read_png(out)
    assert pixels.shape == (*size, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 0 and len(np.unique(pixels)) > 10  # not one flat colour
    assert f"{size[1]}x{size[0]} pixels, CFA GRBG" in report and "overlap 3 (measured" in report
    assert "packed as GRBG into the model's channels (trained on RGGB" in report


def test_process_dng_reads_its_own_cfa(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An odd-sized DNG needs no flags: LibRaw gives pattern and levels; the output is cropped even."""
    raw = np.random.default_rng(0).integers(64, 1024, (47, 61)).astype(np.uint16)
    tags = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (2, 1, 1, 0), True), (50706, "B", 4, (1, 4, 0, 0), True),
            (50708, "s", 0, "ispdc test camera", True), (50714, "H", 1, 64, True), (50717, "H", 1, 1023, True),
            (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True)]
    tifffile.imwrite(tmp_path / "c.dng", raw, photometric=32803, extratags=tags, metadata=None, subfiletype=0)
    assert main(["process", str(tmp_path / "c.dng"), "--bundle", str(bundle), "-o", str(tmp_path / "o.png")]) == 0
    report = capsys.readouterr().out
    assert "CFA BGGR" in report and "cropped 47x61 to 46x60" in report
    assert read_png(tmp_path / "o.png").shape == (46, 60, 3)


def test_process_takes_overlap_from_the_card(bundle_copy: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A card with the handoff stage's input_size section (margin measured on the PyTorch model) sets
    overlap and blend; --overlap overrides it."""
    edit_card(bundle_copy, input_size={"packed_hw": [32, 32], "receptive_field_margin": 3, "overlap": 5,
                                       "blend": 2, "tile_packed_hw": [32, 32]})
    src = tmp_path / "m.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 1024, (100, 90)).astype(np.uint16)).save(src)
    args = ["process", str(src), "--bundle", str(bundle_copy), "-o", str(tmp_path / "o.png"), "--pattern", "RGGB",
            "--black", "0", "--white", "1023"]
    assert main(args) == 0
    assert "overlap 5 (model card: receptive-field margin), blend 2" in capsys.readouterr().out
    assert main([*args, "--overlap", "4"]) == 0
    assert "overlap 4 (given), blend 2" in capsys.readouterr().out


def test_process_packs_each_sensor_pattern_the_same(bundle: Path, tmp_path: Path) -> None:
    """One scene captured on an RGGB and on a GRBG sensor gives the same image: channels mean colours."""
    packed = np.random.default_rng(1).integers(25, 1024, (30, 26, 4)).astype(np.uint16)
    outputs = []
    for pattern in ("RGGB", "GRBG"):
        src = tmp_path / f"{pattern}.png"
        Image.fromarray(unpack_bayer(packed, pattern)).save(src)
        dst = tmp_path / f"{pattern}_out.png"
        assert main(["process", str(src), "--bundle", str(bundle), "-o", str(dst), "--pattern", pattern,
                     "--black", "25", "--white", "1023", "--overlap", "4"]) == 0
        outputs.append(read_png(dst))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_process_bad_input_is_one_line(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mosaic = tmp_path / "m.png"
    Image.fromarray(np.full((40, 40), 300, dtype=np.uint16)).save(mosaic)
    cases = [
        ([str(mosaic), "--bundle", str(bundle), "-o", str(tmp_path / "o.png")], "--pattern, --black, --white"),
        ([str(tmp_path / "none.dng"), "--bundle", str(bundle), "-o", str(tmp_path / "o.png")],
         "none.dng: no such file"),
        ([str(mosaic), "--bundle", str(tmp_path / "nobundle"), "-o", str(tmp_path / "o.png"), "--pattern", "RGGB",
          "--black", "0", "--white", "1023"], "nobundle: no such bundle folder"),
        ([str(mosaic), "--bundle", str(bundle), "-o", str(tmp_path / "o.jpg"), "--pattern", "RGGB", "--black", "0",
          "--white", "1023"], "give a .png file name"),
        ([str(mosaic), "--bundle", str(bundle), "-o", str(tmp_path / "o.png"), "--pattern", "RGGB", "--black", "0",
          "--white", "1023", "--overlap", "16"], "--overlap 16 is too large"),
    ]
    for argv, message in cases:
        assert main(["process", *argv]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("ispdc: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.png").exists()


# --- verify ----------------------------------------------------------------------------------------------


def flip_weights(model: Path) -> None:
    """Invert the bytes of the largest constant buffer (a conv's int8 weights): still a valid model."""
    from ai_edge_litert.tools import flatbuffer_utils

    m = flatbuffer_utils.read_model(str(model))
    largest = max((b for b in m.buffers if b.data is not None), key=lambda b: len(b.data))
    largest.data = (np.asarray(largest.data, dtype=np.uint8) ^ 0xFF).astype(np.uint8)
    flatbuffer_utils.write_model(m, str(model))


def test_verify_good_bundle(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("OK") and "golden output reproduced" in out


def test_verify_catches_tampered_weights(bundle_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a hash in the card, the golden vectors alone catch a changed weight."""
    edit_card(bundle_copy, model_sha256=None, files_sha256=None)
    assert main(["verify", str(bundle_copy)]) == 0
    assert "not in the card" in capsys.readouterr().out
    flip_weights(bundle_copy / "model.tflite")
    assert main(["verify", str(bundle_copy)]) == 1
    captured = capsys.readouterr()
    assert "FAILED: golden output not reproduced" in captured.err and "OK" not in captured.out.splitlines()
    assert "sha256" not in captured.err


def test_verify_checks_the_cards_hash(bundle_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_card(bundle_copy, model_sha256=hashlib.sha256((bundle_copy / "model.tflite").read_bytes()).hexdigest())
    assert main(["verify", str(bundle_copy)]) == 0
    assert "sha256 matches" in capsys.readouterr().out
    flip_weights(bundle_copy / "model.tflite")
    assert main(["verify", str(bundle_copy)]) == 1
    err = capsys.readouterr().err
    assert "FAILED: model_sha256 / files_sha256[model.tflite]: card " in err and "golden output not reproduced" in err


def test_verify_catches_truncated_model_and_missing_files(bundle_copy: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes()[:2000])
    (bundle_copy / "run_model.py").unlink()
    assert main(["verify", str(bundle_copy)]) == 1
    err = capsys.readouterr().err
    assert "model.tflite does not load" in err and "missing file(s): run_model.py" in err
    assert main(["verify", str(bundle_copy.parent / "nothing")]) == 2
    assert "no such bundle folder" in capsys.readouterr().err

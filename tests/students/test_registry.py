"""Every registered student, tested by being registered (its ``ModelInfo`` says how).

Forward at odd and non-square sizes it supports, backward, the default configuration's parameter
count against the paper's, named feature taps, ONNX parity, and fp32 TFLite parity with builtin ops
only.  The TFLite conversions (onnx2tf, seconds each) run once per student in a session fixture.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.export.onnx_export import export_onnx
from compress.runtime.parity import parity_psnr
from students import STUDENTS, create_student, list_students

NAMES = list_students()


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_student(name, **STUDENTS.info(name).tiny_config).eval()


def _side(name: str, units: int) -> int:
    """A supported packed-input side: ``units`` multiples of the model's input multiple, >= min_input."""
    info = STUDENTS.info(name)
    m = info.input_multiple
    side = units * m
    while side < info.min_input:
        side += m
    return side


def _input(name: str, h: int, w: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    channels = STUDENTS.info(name).in_channels
    return np.random.default_rng(seed).random((batch, channels, h, w), dtype=np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_forward_at_odd_and_non_square_sizes(name: str) -> None:
    info, model = STUDENTS.info(name), _tiny(name)
    for h, w in [(_side(name, 3), _side(name, 5)), (_side(name, 5), _side(name, 3))]:
        with torch.no_grad():
            out = model(torch.from_numpy(_input(name, h, w)))
        assert out.shape == (2, 3, h * info.upscale, w * info.upscale)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = _tiny(name).train()
    side = _side(name, 2)
    out = model(torch.from_numpy(_input(name, side, side)))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_default_parameter_count_matches_the_paper(name: str) -> None:
    paper = STUDENTS.info(name).paper
    if "params" not in paper:
        pytest.skip(f"{name}: the paper gives no parameter count")
    ours = sum(p.numel() for p in create_student(name).parameters())
    tolerance = paper.get("params_tolerance", 0.01)
    assert abs(ours - paper["params"]) <= tolerance * paper["params"], (ours, paper)


@pytest.mark.parametrize("name", NAMES)
def test_feature_taps_are_module_paths_that_fire(name: str) -> None:
    model = _tiny(name)
    taps = getattr(model, "feature_taps", ())
    assert taps, f"{name} declares no feature_taps"
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(path).register_forward_hook(
        lambda _m, _i, out, path=path: seen.__setitem__(path, tuple(out.shape))) for path in taps]
    try:
        side = _side(name, 2)
        with torch.no_grad():
            model(torch.from_numpy(_input(name, side, side)))
    finally:
        for hook in hooks:
            hook.remove()
    assert set(seen) == set(taps)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """``exported(name)``: the tiny model, its ONNX and fp32 TFLite files and a test input, built once."""
    from compress.export.tflite import convert_onnx_to_tflite

    root, cache = tmp_path_factory.mktemp("students"), {}

    def build(name: str) -> dict:
        if name not in cache:
            model, side = _tiny(name), _side(name, 2)
            shape = (1, STUDENTS.info(name).in_channels, side, side)
            onnx_path = export_onnx(model, root / name / f"{name}.onnx", shape)
            tflite = convert_onnx_to_tflite(onnx_path, root / name / "tflite", None)["fp32"]
            cache[name] = {"model": model, "onnx": onnx_path, "tflite": tflite, "x": _input(name, side, side, 1)}
        return cache[name]

    return build


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_onnx_and_fp32_tflite_match_pytorch_with_builtin_ops_only(name: str, exported) -> None:
    from compress.export.tflite_inspect import assert_builtin_only, tflite_ops

    art = exported(name)
    assert parity_psnr(art["model"], art["onnx"], art["x"]) >= 60.0
    assert parity_psnr(art["model"], art["tflite"], art["x"]) >= 60.0
    assert_builtin_only(art["tflite"])
    ops = tflite_ops(art["tflite"])
    if any(isinstance(m, torch.nn.PixelShuffle) for m in art["model"].modules()):
        assert "DEPTH_TO_SPACE" in ops  # native op, not a 6-D reshape/transpose chain

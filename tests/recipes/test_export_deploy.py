"""The export stage's deployment side on its own: ``export.require`` messages and the ONNX fallback
for frame models (a graph whose shapes cannot be rewritten)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import recipes.stages.export_deploy as deploy
from compress.export.frame_model import FrameResizeError
from recipes.context import StageError
from recipes.loader import load_recipe
from recipes.metric_keys import psnr_key


def _report(gpu_ok: bool, whole: bool, builtin_psnr: float) -> dict:
    flagged = [] if gpu_ok else [{"op": "TOPK_V2", "reason": "Not supported op TOPK_V2"}]
    return {"tflite_int8": {
        "gpu": {"compatible": gpu_ok, "flagged": flagged},
        "xnnpack": {"partitions": 1 if whole else 2, "undelegated": [] if whole else ["PRELU"], "whole_graph": whole},
        "builtin": {"psnr": builtin_psnr, "psnr_drop_db": 0.0}}}


def test_require_names_each_runtime_and_its_reason() -> None:
    recipe, _ = load_recipe("quickstart", ["export.require=[gpu, xnnpack, builtin]"])
    ctx = SimpleNamespace(recipe=recipe)
    metrics = {psnr_key("tflite_fp32"): 30.0}
    assert deploy.require_failures(ctx, _report(True, True, 29.5), metrics) == []  # type: ignore[arg-type]
    failures = deploy.require_failures(ctx, _report(False, False, 28.0), metrics)  # type: ignore[arg-type]
    assert failures == [
        "export.require gpu: the GPU delegate cannot take tflite_int8 (TOPK_V2: Not supported op TOPK_V2)",
        "export.require xnnpack: XNNPACK splits tflite_int8 into 2 partition(s) and leaves ['PRELU'] to the "
        "builtin kernels",
        "export.require builtin: on TFLite's builtin kernels tflite_int8 loses 2.000 dB vs fp32, over "
        "quantize.gate.max_drop_db.int8 1 dB"]
    recipe, _ = load_recipe("quickstart", ["export.require=[]"])
    nothing_required = SimpleNamespace(recipe=recipe)
    assert deploy.require_failures(nothing_required, _report(False, False, 0.0), metrics) == []  # type: ignore[arg-type]


def test_frame_size_must_fit_the_models_upscale_and_input_multiple() -> None:
    assert deploy.frame_packed_hw((1088, 1920), 2, 16) == (544, 960)
    with pytest.raises(StageError, match=r"export.frame_size \[1080, 1920\] .* multiple of 16"):
        deploy.frame_packed_hw((1080, 1920), 2, 16)  # 540 packed rows: not a multiple of 16
    with pytest.raises(StageError, match="export.frame_size"):
        deploy.frame_packed_hw((96, 160), 3, 1)


@pytest.mark.slow
def test_frame_models_fall_back_to_onnx_when_shapes_cannot_be_rewritten(tiny_smallnet_tflite, tmp_path: Path,
                                                                        monkeypatch) -> None:
    def refuse(*_args, **_kwargs):  # a graph with baked shapes
        raise FrameResizeError("baked RESHAPE")

    monkeypatch.setattr(deploy, "resize_tflite", refuse)
    recipe, _ = load_recipe("quickstart", [])
    calibration = np.random.default_rng(0).random((4, 4, 32, 32)).astype(np.float32)
    frames, built_by, exact = deploy.build_frame_models(
        SimpleNamespace(recipe=recipe), tmp_path, tiny_smallnet_tflite.model,  # type: ignore[arg-type]
        {"fp32": tiny_smallnet_tflite.fp32, "int8": tiny_smallnet_tflite.int8}, calibration, (48, 80))
    assert built_by == "onnx" and exact == {} and sorted(frames) == ["fp32", "int8"]
    from ai_edge_litert.interpreter import Interpreter

    for path in frames.values():
        assert list(Interpreter(model_path=str(path)).get_input_details()[0]["shape"]) == [1, 48, 80, 4]


@pytest.mark.parametrize(("override", "message"), [
    ("export.frame_size=[1087, 1920]", "export.frame_size: frame_size [1087, 1920] must be even"),
    ("export.require=[npu]", "export.require.0: Input should be 'gpu', 'xnnpack' or 'builtin'"),
])
def test_bad_deployment_keys_are_one_line_naming_the_key(override: str, message: str, capsys) -> None:
    from recipes.cli import main

    assert main(["validate", "quickstart", "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1

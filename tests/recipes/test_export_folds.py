"""Export ships single convs even when the recipe turns the fold stage off."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from recipes.loader import load_recipe
from recipes.runner import run_recipe

TINY = ["teacher.config.width=8", "teacher.train.steps=2", "teacher.train.batch_size=2",
        "student.config={width: 8, block: ecb}", "student.train.steps=3", "student.train.batch_size=2",
        "data.patch_size=16", "data.patches_per_image=2", "data.max_side=128", "export.input_size=[32,32]",
        "quantize.calibration_frames=2", "export.frame_size=null"]


@pytest.mark.slow
def test_an_ecb_student_with_fold_off_is_folded_at_export(tmp_path: Path) -> None:
    spec, path = load_recipe("quickstart", [*TINY, "fold.enabled=false", "prune=null", "run_until=export"])
    _, outcomes = run_recipe(spec, path, tmp_path)
    assert [o.name for o in outcomes] == ["teacher", "student", "quantize", "export"]
    export = outcomes[-1]
    graph = onnx.load(export.result.onnx).graph
    assert sum(node.op_type == "Conv" for node in graph.node) == 3  # three ECBs, each one conv
    assert export.metrics["parity_psnr_db_tflite_fp32"] >= 60 and export.metrics["parity_psnr_db_onnx"] >= 60

"""Quantize/export/handoff with every TFLite variant: per-variant metrics, the quality gate and the card.

One tiny recipe (no teacher, no pruning, Smallnet width 8 at 32x32 packed) runs once with all variants,
the x86 ones, QAT (learned ranges), MSE ranges, bias correction, spread calibration and selective precision;
a second run in the same workdir reuses the student and fails the gate with impossible budgets.  Schema checks
and the README rendering need no conversion.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.bundle.card import input_size_section
from compress.bundle.readme import render_readme
from recipes.loader import RecipeError, load_recipe
from recipes.runner import StageError, run_recipe
from recipes.schema import DEFAULT_MAX_DROP_DB, QuantizeStage

TINY = ["teacher=null", "student.distill.unpaired_raw=0", "prune=null", "student.config={width: 8}",
        "student.train.steps=4", "student.train.batch_size=2", "student.distill.output_kd=0", "data.patch_size=16",
        "data.patches_per_image=2", "data.max_side=128", "export.input_size=[32,32]", "export.frame_size=null",
        "quantize.calibration_frames=4", "quantize.calibration_selection=spread",
        "quantize.variants=[int16x8, float16, dynamic]", "quantize.selective={max_drop_db: 50}",
        "quantize.qat={train: {steps: 4, batch_size: 2, lr: 0.001}, kd_weight: 0.5}",
        "quantize.x86=[onnx_int8, onnx_int16, inc_int8]", "quantize.inc_max_trials=2",
        "quantize.ranges=mse", "quantize.weight_rounding=bias_correction"]
X86 = ["onnx_int8", "onnx_int16", "inc_int8"]
VARIANTS = ["fp32", "int8", "int16x8", "float16", "dynamic"]


@pytest.fixture(scope="session")
def gated_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("quant_gate")
    recipe, path = load_recipe("quickstart", TINY)
    _, outcomes = run_recipe(recipe, path, workdir)
    return {"workdir": workdir, "outcomes": {o.name: o for o in outcomes}}


@pytest.mark.slow
def test_every_variant_is_scored_with_per_variant_keys(gated_run: dict) -> None:
    m = gated_run["outcomes"]["export"].metrics
    for v in VARIANTS:
        fmt = f"tflite_{v}"
        for key in (f"psnr_{fmt}", f"ssim_{fmt}", f"parity_psnr_db_{fmt}", f"size_kb_{fmt}",
                    f"latency_ms_{fmt}_2t", f"rmse_{fmt}_r", f"rmse_{fmt}_g", f"rmse_{fmt}_b"):
            assert key in m, key
        if v != "fp32":
            assert m[f"psnr_drop_db_tflite_{v}"] == pytest.approx(m["psnr_tflite_fp32"] - m[f"psnr_{fmt}"])
    assert m["latency_ms_tflite_int8_1t"] > 0  # the shipped variant is timed at 1 and 2 threads
    assert m["psnr"] == m["psnr_tflite_int8"] and m["size_kb"] == m["size_kb_tflite_int8"]
    assert m["selective_float_layers"] == 0  # a 50 dB budget holds without float layers
    assert m["int8_calibrator_ranges_corrected"] >= 0  # shipped int8 ranges are the values' own (ranges.py)
    for c in "rgb":  # vs PyTorch: fp32 is exact up to float rounding, int8 carries quantization error
        assert m[f"rmse_tflite_fp32_{c}"] < 1e-4 and m[f"rmse_tflite_fp32_{c}"] < m[f"rmse_tflite_int8_{c}"]


@pytest.mark.slow
def test_qat_model_is_what_the_export_converts(gated_run: dict) -> None:
    from compress.checkpoint import load_model

    outcomes = gated_run["outcomes"]
    q, m = outcomes["quantize"].metrics, outcomes["export"].metrics
    qat_model, spec = load_model(outcomes["quantize"].result.model)
    student, _ = load_model(outcomes["student"].result.model)
    assert spec.folded and outcomes["quantize"].result.model.is_relative_to(gated_run["workdir"] / "stages")
    x = torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(qat_model(x), student(x), atol=1e-6)  # QAT changed the weights
    assert q["qat_final_loss"] > 0 and 20 < q["qat_fake_quant_psnr_end"] < 100
    assert q["psnr"] != q["qat_psnr_before"]
    assert m["psnr_pytorch"] == pytest.approx(q["psnr"], abs=1e-6)  # export scored the QAT model
    learned = json.loads(outcomes["quantize"].result.learned_ranges.read_text())  # learn_ranges is on by default
    assert q["qat_learned_ranges"] == len(learned) >= 3
    assert all(r["lo"] <= 0 <= r["hi"] and r["channels"] > 0 for r in learned)


@pytest.mark.slow
def test_x86_variants_are_scored_next_to_tflite(gated_run: dict) -> None:
    from compress.quantization.onnx_quant import activation_dtypes

    export = gated_run["outcomes"]["export"]
    m = export.metrics
    for v in X86:
        for key in (f"psnr_{v}", f"ssim_{v}", f"parity_psnr_db_{v}", f"psnr_drop_db_{v}", f"latency_ms_{v}_2t",
                    f"rmse_{v}_r"):
            assert key in m, key
    assert m["psnr_drop_db_onnx_int8"] == pytest.approx(m["psnr_onnx"] - m["psnr_onnx_int8"])
    assert m["psnr_drop_db_inc_int8"] == pytest.approx(m["psnr_pytorch"] - m["psnr_inc_int8"])
    assert m["parity_psnr_db_onnx_int16"] > m["parity_psnr_db_onnx_int8"] > 20  # 16-bit activations are closer
    assert m["latency_ms_pytorch_2t"] > 0 and 1 <= m["inc_trials"] <= 2
    assert activation_dtypes(export.result.x86["onnx_int8"]) == {"uint8"}
    assert activation_dtypes(export.result.x86["onnx_int16"]) == {"int16"}


@pytest.mark.slow
def test_card_lists_variants_precision_calibration_size_rules_and_hash(gated_run: dict) -> None:
    bundle = gated_run["outcomes"]["handoff"].result.bundle
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["variant"] == "int8" and card["quantization"].startswith("int8: per-channel")
    assert sorted(card["quality"]) == sorted(f"tflite_{v}" for v in VARIANTS)
    assert set(card["quality"]["tflite_int16x8"]) >= {"psnr", "ssim", "parity_psnr_db", "psnr_drop_db", "size_kb",
                                                      "latency_ms"}
    assert set(card["cost"]["latency_ms_by_threads"]) == {"1", "2"}
    assert card["precision"]["summary"] == "all int8" and card["precision"]["float_layers"] == []
    assert card["calibration"]["frames"] == 4 and card["calibration"]["selection"] == "spread"
    assert "'train'" in card["calibration"]["source"]
    assert card["calibration"]["activation_ranges"] == "learned"  # QAT's ranges went into the int8 model
    assert card["calibration"]["weight_rounding"] == "bias_correction" and "float_ops" not in card["calibration"]
    size = card["input_size"]
    assert size["packed_hw"] == [32, 32] and size["receptive_field_margin"] == 3 and size["overlap"] == 3
    assert card["model_sha256"] == hashlib.sha256((bundle / "model.tflite").read_bytes()).hexdigest()
    readme = (bundle / "README.md").read_text()
    assert "tflite_dynamic" in readme and "all int8" in readme and card["model_sha256"] in readme
    assert "- weights: per-channel symmetric, rounded to nearest, biases corrected" in readme


@pytest.mark.slow
def test_int8_converts_from_bias_corrected_weights_and_float_variants_do_not(gated_run: dict) -> None:
    import onnx
    from onnx import numpy_helper

    def biases(path: Path) -> list[np.ndarray]:
        graph = onnx.load(path).graph
        conv_biases = {n.input[2] for n in graph.node if n.op_type == "Conv" and len(n.input) > 2}
        return [numpy_helper.to_array(t) for t in graph.initializer if t.name in conv_biases]

    folder = gated_run["outcomes"]["export"].result.onnx.parent
    original, corrected = biases(folder / "model.onnx"), biases(folder / "model_bias_correction.onnx")
    assert len(original) == len(corrected) >= 2
    shift = [float(np.abs(a - b).max()) for a, b in zip(original, corrected, strict=True)]
    assert 0 < max(shift) < 0.05  # a correction of the rounding's mean shift, not new weights
    m = gated_run["outcomes"]["export"].metrics
    assert m["rmse_tflite_fp32_r"] < 1e-4  # fp32 still converts the model's own weights


@pytest.mark.slow
def test_a_variant_over_budget_fails_export_and_writes_no_bundle(gated_run: dict) -> None:
    workdir = gated_run["workdir"]
    strict = [*TINY, "quantize.gate={max_drop_db: {int8: -100, onnx_int8: -100}, min_parity_db: {float16: 500}}",
              "handoff.name=never"]
    recipe, path = load_recipe("quickstart", strict)
    with pytest.raises(StageError) as info:
        run_recipe(recipe, path, workdir)
    message = str(info.value)
    assert "int8 PSNR drop" in message and "quantize.gate.max_drop_db.int8 -100 dB" in message
    assert "onnx_int8 PSNR drop" in message and "quantize.gate.max_drop_db.onnx_int8 -100 dB" in message
    assert "float16 parity vs PyTorch" in message and "quantize.gate.min_parity_db.float16 500 dB" in message
    assert "no bundle" in message
    assert not (workdir / "handoff" / "never").exists() and not list((workdir / "handoff").glob(".never*"))


def test_schema_defaults_and_checks() -> None:
    q = QuantizeStage()
    assert q.mode == "int8" and q.variants == [] and q.built_variants() == ["fp32", "int8"]
    assert q.gate.drop_budget("int16x8") == DEFAULT_MAX_DROP_DB["int16x8"]
    assert q.gate.parity_budget("fp32", 60.0) == 60.0
    q = QuantizeStage(mode="float16", variants=["int8", "float16"], gate={"max_drop_db": {"int8": 0.2}})
    assert q.built_variants() == ["fp32", "float16", "int8"] and q.gate.drop_budget("int8") == 0.2
    with pytest.raises(RecipeError, match="quantize.selective: selective precision works on the int8 variant"):
        load_recipe("quickstart", ["quantize.mode=float16", "quantize.selective={max_drop_db: 0.1}"])
    recipe, _ = load_recipe("quickstart", ["quantize.selective={max_drop_db: 0.1}"])
    assert recipe.quantize.selective is not None and recipe.quantize.selective.probe == 8
    with pytest.raises(RecipeError, match="quantize.selective.probe"):
        load_recipe("quickstart", ["quantize.selective={max_drop_db: 0.1, probe: 0}"])
    with pytest.raises(RecipeError, match="quantize.mode"):
        load_recipe("quickstart", ["quantize.mode=int4"])
    with pytest.raises(RecipeError, match="quantize.calibration_selection"):
        load_recipe("quickstart", ["quantize.calibration_selection=brightest"])
    with pytest.raises(RecipeError, match="quantize.weight_rounding"):
        load_recipe("quickstart", ["quantize.weight_rounding=gptq"])
    assert QuantizeStage().weight_rounding == "none"


def test_readme_lists_float_layers_and_every_variant() -> None:
    row = {"psnr": 30.0, "ssim": 0.9, "parity_psnr_db": 40.0, "psnr_drop_db": 0.05, "size_kb": 5.0, "latency_ms": 1.0}
    card = {
        "name": "n", "description": "d", "quantization": "int8: ...", "variant": "int8",
        "input": {"name": "raw", "shape": [1, 8, 8, 4], "dtype": "int8", "layout": "NHWC", "scale": 0.004,
                  "zero_point": -128, "channel_order": ["B", "Gb", "R", "Gr"], "bayer_pattern": "RGGB",
                  "packing": {"B": "1::2, 1::2"}, "normalisation": "x", "range": [0, 1]},
        "output": {"name": "rgb", "shape": [1, 16, 16, 3], "dtype": "int8", "scale": 0.004, "zero_point": -128,
                   "range": [0, 1]},
        "quality": {"tflite_fp32": {**row, "psnr_drop_db": 0.0}, "tflite_int8": row},
        "precision": {"description": "int8 with 1 float layer", "summary": "int8 except 1 float layer(s)",
                      "float_layers": ["model/tf.math.tanh/Tanh"]},
        "evaluation": "e", "cost": {"size_kb": 5.0, "params": 10, "macs": 100, "latency_ms": 1.0,
                                    "latency_threads": 2, "latency_ms_by_threads": {"1": 1.5, "2": 1.0}},
        "model_sha256": "ab" * 32, "provenance": {"recipe": "r"},
    }
    text = render_readme(card)
    assert "float: `model/tf.math.tanh/Tanh`" in text
    assert "| tflite_int8 | 30.00 | 0.9000 | 40.00 | 0.050 | 5.0 | 1.00 |" in text
    assert "1.50 ms with 1 thread(s)" in text and "ab" * 32 in text


class _GlobalContext(torch.nn.Module):
    """A conv plus the image mean: every output depends on every input (no exact tiling)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 12, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.shuffle(y + y.mean(dim=(2, 3), keepdim=True))


def test_input_size_rules_follow_the_receptive_field() -> None:
    torch.manual_seed(0)
    shallow = torch.nn.Sequential(torch.nn.Conv2d(4, 12, 3, padding=1), torch.nn.PixelShuffle(2)).eval()
    section = input_size_section(shallow, (32, 32))
    assert section["receptive_field_margin"] == 1 and section["overlap"] == 1
    assert section["tile_packed_hw"] == [32, 32] and "identical to one pass" in section["tiling"]
    deep = torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(5)],
                               torch.nn.Conv2d(4, 12, 3, padding=1), torch.nn.PixelShuffle(2)).eval()
    assert "export a larger input size" in input_size_section(deep, (16, 16))["tiling"]
    section = input_size_section(_GlobalContext().eval(), (32, 32))
    assert section["receptive_field_margin"] is None and section["overlap"] == 8
    assert "global context" in section["tiling"]

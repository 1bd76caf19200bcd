"""The delegate report: GPU-delegate op rules, the analyzer's printout, XNNPACK partitions.

The models come from the session's tiny Smallnet conversion (``tests/conftest.py``); an op the GPU
delegate lacks is made by pointing one operator of that model at a ``TOPK_V2`` opcode (the report
only reads the flatbuffer, so the edited model need not run).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from compress.export.delegates import builtin_section, gpu_rule_report, parse_analyzer, summarise, xnnpack_section

ANALYZER_TEXT = """\
Subgraph#0 main(T#0) -> [T#3]
  Op#0 FlexCosh(T#0) -> [T#1]
GPU COMPATIBILITY WARNING: Not supported custom op FlexCosh
  Op#1 ADD(T#2, T#1) -> [T#3]

GPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at nodes 0 on TFLite runtime version 2.21
"""


def test_parse_analyzer_attributes_each_warning_to_the_op_above_it() -> None:
    assert parse_analyzer(ANALYZER_TEXT) == [{"op": "FlexCosh", "reason": "Not supported custom op FlexCosh"}]
    assert parse_analyzer("Your model looks compatible with GPU delegate") == []


def _with_op(src: Path, dest: Path, op_name: str) -> Path:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    code = schema.OperatorCodeT()
    code.builtinCode = getattr(schema.BuiltinOperator, op_name)
    code.deprecatedBuiltinCode = min(code.builtinCode, 127)
    code.version = 1
    model.operatorCodes.append(code)
    model.subgraphs[0].operators[0].opcodeIndex = len(model.operatorCodes) - 1
    flatbuffer_utils.write_model(model, str(dest))
    return dest


@pytest.mark.slow
def test_gpu_rules_pass_smallnet_and_flag_an_op_the_delegate_lacks(tiny_smallnet_tflite, tmp_path: Path) -> None:
    for path in (tiny_smallnet_tflite.fp32, tiny_smallnet_tflite.int8):
        assert gpu_rule_report(path) == {"compatible": True, "flagged": []}
    edited = _with_op(tiny_smallnet_tflite.fp32, tmp_path / "topk.tflite", "TOPK_V2")
    assert gpu_rule_report(edited) == {"compatible": False,
                                       "flagged": [{"op": "TOPK_V2", "reason": "Not supported op TOPK_V2"}]}


@pytest.mark.slow
def test_xnnpack_takes_the_whole_tiny_smallnet(tiny_smallnet_tflite) -> None:
    for path in (tiny_smallnet_tflite.fp32, tiny_smallnet_tflite.int8):
        section = xnnpack_section(path)
        assert section["partitions"] == 1 and section["undelegated"] == [] and section["whole_graph"]


def test_builtin_section_and_summary_lines() -> None:
    assert builtin_section(30.0, 30.5) == {"psnr": 30.0, "psnr_drop_db": 0.5}
    report = {"tflite_int16x8": {"gpu": {"compatible": False, "flagged": [
        {"op": "DEQUANTIZE", "reason": "Unsupported dequantization type."}]},
        "xnnpack": {"partitions": 1, "undelegated": ["CONV_2D", "CONV_2D"]}}}
    assert summarise(report) == ["tflite_int16x8: GPU no (DEQUANTIZE: Unsupported dequantization type.); "
                                 "XNNPACK 1 partition(s), 2 op(s) left out (['CONV_2D'])"]

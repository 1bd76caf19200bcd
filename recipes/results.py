"""What each stage hands on to the stages after it: one typed result per stage, kept in ``done.json``.

A stage returns ``(metrics, result)``; the metrics go to MLflow, the result (paths into the stage's
folder, and the shipped variant) is what later stages, the summary and the CLI read.  Results are
plain dataclasses of ``Path``s so a cached stage reads back exactly what the stage wrote.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

ResultT = TypeVar("ResultT", bound="StageResult")


@dataclass(frozen=True)
class StageResult:
    """Base of every stage result: JSON round trip of its ``Path`` / ``dict[str, Path]`` fields."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls: type[ResultT], data: dict[str, Any]) -> ResultT:
        hints = get_type_hints(cls)
        return cls(**{f.name: _decode(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)
                      if f.name in data})


def _encode(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if hint in (Path, Path | None):
        return Path(value)
    if hint == dict[str, Path]:
        return {k: Path(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ModelResult(StageResult):
    """A stage that produces a model (teacher, student, fold): its ``compress.checkpoint`` folder."""

    model: Path


@dataclass(frozen=True)
class PruneResult(ModelResult):
    channel_plan: Path


@dataclass(frozen=True)
class QuantizeResult(ModelResult):
    """``model`` is the QAT fine-tune's float model, or the incoming model without QAT."""

    calibration: Path
    activation_ranges: Path
    learned_ranges: Path | None = None
    """QAT's trained activation ranges (``quantize.qat.learn_ranges``), which the export writes into int8."""


@dataclass(frozen=True)
class ExportResult(StageResult):
    onnx: Path
    tflite: dict[str, Path]
    """Every TFLite variant built (``fp32`` always), by variant name."""
    shipped_variant: str
    io_details: Path
    x86: dict[str, Path] = field(default_factory=dict)
    """``quantize.x86`` models written to disk (the ONNX Runtime QDQ variants), by variant name."""
    selective: Path | None = None
    """The selective-precision search's ``selective.json``, when the recipe asked for one."""
    frame_tflite: dict[str, Path] = field(default_factory=dict)
    """Every TFLite variant at ``export.frame_size`` (empty without one), by variant name."""
    deployment: Path | None = None
    """``deployment.json``: the delegate report per variant and the frame-size figures."""

    @property
    def shipped_tflite(self) -> Path:
        return self.tflite[self.shipped_variant]


@dataclass(frozen=True)
class HandoffResult(StageResult):
    bundle: Path


RESULT_TYPES: dict[str, type[StageResult]] = {
    "teacher": ModelResult, "student": ModelResult, "prune": PruneResult, "fold": ModelResult,
    "quantize": QuantizeResult, "export": ExportResult, "handoff": HandoffResult,
}
"""The result type of each stage, to read a ``done.json`` back."""


def read_result(stage: str, data: dict[str, Any]) -> StageResult:
    return RESULT_TYPES[stage].from_json(data)

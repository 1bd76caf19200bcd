"""The recipe: one YAML file that reads top to bottom, validated strictly.

Every block forbids unknown keys, so a typo is an error naming its key path, never a silently ignored
setting.  YAML is read with ``safe_load``; nothing in a recipe is imported or called by name except
registered models and losses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.prune import PruneTarget
from distill.data.bayer import PATTERNS
from distill.losses import LOSSES
from distill.trainer import TrainSpec


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


DEFAULT_SPLITS = {"embedded": ("train", "eval"), "zurich": ("train", "test"), "mai21": ("train", "val"),
                  "paired": ("train", "test")}


class DataSpec(Strict):
    """Where RAW/RGB pairs come from and how training patches are cut (sizes in packed-RAW pixels)."""

    kind: Literal["embedded", "zurich", "mai21", "paired"] = "embedded"
    root: Path | None = Field(None, description="dataset folder (relative to the working directory)")
    train_split: str | None = None
    eval_split: str | None = None
    pattern: str = "RGGB"
    max_side: int = Field(256, ge=32, description="embedded data: longer side of each photo in RGB pixels")
    raw_dir: str = "raw"
    rgb_dir: str = "rgb"
    black_level: float = Field(0.0, ge=0)
    white_level: float = Field(1023.0, gt=0)
    patch_size: int = Field(32, ge=8, description="training crop side in packed-RAW pixels")
    patches_per_image: int = Field(16, ge=1)
    max_eval_images: int | None = Field(None, ge=1)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        if value.upper() not in PATTERNS:
            raise ValueError(f"unknown Bayer pattern {value!r}; expected one of {', '.join(PATTERNS)}")
        return value.upper()

    @field_validator("root")
    @classmethod
    def _root_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"data folder {str(value)!r} does not exist")
        return value

    @model_validator(mode="after")
    def _root_needed(self) -> "DataSpec":
        if self.kind != "embedded" and self.root is None:
            raise ValueError(f"data.kind {self.kind!r} needs data.root (the dataset folder)")
        return self

    def splits(self) -> tuple[str, str]:
        train, evaluation = DEFAULT_SPLITS[self.kind]
        return self.train_split or train, self.eval_split or evaluation


class ModelBlock(Strict):
    """A registered model by name and its config; ``family`` says which registry to check."""

    family: ClassVar[str]
    model: str
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _registered(cls, name: str) -> str:
        from students import STUDENTS
        from teachers import TEACHERS

        registry = TEACHERS if cls.family == "teacher" else STUDENTS
        if name not in registry:
            raise ValueError(f"unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}")
        return name


class TeacherStage(ModelBlock):
    family: ClassVar[str] = "teacher"
    model: str = "punet"
    train: TrainSpec = Field(default_factory=TrainSpec)


class DistillSpec(Strict):
    output_kd: float = Field(0.5, ge=0, description="weight of the teacher-output term")
    loss: str = "l1"

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
        return name


class StudentStage(ModelBlock):
    family: ClassVar[str] = "student"
    model: str = "smallnet"
    train: TrainSpec = Field(default_factory=TrainSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)


class PruneStage(PruneTarget):
    finetune: TrainSpec = Field(default_factory=lambda: TrainSpec(steps=100))
    kd_weight: float = Field(0.5, ge=0, description="output KD from the unpruned model during fine-tune")


class FoldStage(Strict):
    enabled: bool = True


class QuantizeStage(Strict):
    mode: Literal["int8"] = "int8"
    int8_io: bool = Field(True, description="int8 model input/output (else float I/O around an int8 body)")
    calibration_frames: int = Field(32, ge=1, description="RAW crops from the training data")


class ExportStage(Strict):
    input_size: tuple[int, int] = Field((64, 64), description="packed RAW height, width of the shipped model")
    parity_min_db: float = Field(60.0, description="fp32 TFLite and ONNX must match PyTorch this closely")
    latency_threads: int = Field(2, ge=1)

    @field_validator("input_size")
    @classmethod
    def _even(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 8:
            raise ValueError(f"input_size {list(value)} is too small (>= 8 packed pixels per side)")
        return value


class HandoffStage(Strict):
    name: str | None = Field(None, description="bundle folder name; defaults to the recipe name")


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: TeacherStage | None = None
    student: StudentStage = Field(default_factory=StudentStage)
    prune: PruneStage | None = None
    fold: FoldStage = Field(default_factory=FoldStage)
    quantize: QuantizeStage = Field(default_factory=QuantizeStage)
    export: ExportStage = Field(default_factory=ExportStage)
    handoff: HandoffStage = Field(default_factory=HandoffStage)

    @property
    def bundle_name(self) -> str:
        return self.handoff.name or self.name

"""Recipe blocks for the data and the model stages: teacher and student (with distillation)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from compress.model_contract import quick_contract_findings
from distill.checkpointing import CheckpointError
from distill.data.bayer import PATTERNS
from distill.losses import LOSSES
from distill.trainer import TrainSpec
from recipes.schema.base import Strict
from recipes.teacher_checkpoint import check_teacher_checkpoint
from teachers.aaunet import parse_loss_term
from teachers.registry import STUDENTS, TEACHERS

DEFAULT_SPLITS = {"embedded": ("train", "eval"), "zurich": ("train", "test"), "mai21": ("train", "val"),
                  "paired": ("train", "test")}


class DataSpec(Strict):
    """Where RAW/RGB pairs come from and how training patches are cut (sizes in packed-RAW pixels)."""
    kind: Literal["embedded", "zurich", "mai21", "paired"] = "embedded"
    root: Path | None = Field(None, description="dataset folder (a relative path is relative to the recipe file)")
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
    crop_sets: int | None = Field(None, ge=1, description="cycle through this many fixed crop sets (a fixed "
                                  "dataset: teacher outputs can then be cached); default: new crops every epoch")
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
    def _root_needed(self) -> DataSpec:
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
        registry = TEACHERS if cls.family == "teacher" else STUDENTS
        if name not in registry:
            raise ValueError(f"unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}")
        return name

    @model_validator(mode="after")
    def _meets_the_contract(self) -> ModelBlock:
        """The model built with this config gives the declared output shape (run on the meta device: no
        weights, milliseconds), so a plugin model that breaks the contract fails here, not after training."""
        findings = quick_contract_findings(self.family, self.model, self.config)
        if findings:
            raise ValueError("; ".join(findings) + " (ispdc check-model tells every stage's view)")
        return self


class LevelSpec(Strict):
    """One step of PyNET's level-wise schedule: train the output of ``level`` (5 coarsest ... 0 finest)."""
    level: int = Field(ge=0, le=5)
    train: TrainSpec = Field(default_factory=TrainSpec)


class TeacherStage(ModelBlock):
    family: ClassVar[str] = "teacher"
    model: str = "punet"
    train: TrainSpec = Field(default_factory=TrainSpec)
    levels: list[LevelSpec] | None = Field(
        None, description="level-wise schedule, coarsest first (PyNET); replaces train when given")
    multilevel_loss: dict[str, float] | None = Field(
        None, description="AA-UNet multi-level loss terms l<level>_<mse|ssim>: weight; replaces train.losses")
    clean_image: bool = Field(False, description="learn g(J) -> J on the target RGB (LW-ISP clean-image teacher)")
    checkpoint: Path | None = Field(
        None, description="pre-trained weights instead of training: a saved model/ folder or a state_dict .pt "
                          "(relative to the recipe file); checked against model and config")

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_fits(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and "model" in info.data and "config" in info.data:
            try:
                check_teacher_checkpoint(value, info.data["model"], info.data["config"])
            except CheckpointError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("levels")
    @classmethod
    def _coarse_to_fine(cls, levels: list[LevelSpec] | None) -> list[LevelSpec] | None:
        if levels is not None:
            order = [lv.level for lv in levels]
            if not order or order != sorted(order, reverse=True) or len(set(order)) != len(order):
                raise ValueError(f"levels must run coarsest first without repeats (e.g. 5,4,...,0); got {order}")
            if order[-1] != 0:
                raise ValueError(f"the schedule must end at level 0 (the full-resolution output); got {order}")
        return levels

    @field_validator("multilevel_loss")
    @classmethod
    def _known_terms(cls, terms: dict[str, float] | None) -> dict[str, float] | None:
        if terms is not None:
            if not terms:
                raise ValueError("needs at least one term, e.g. {l1_mse: 1.0, l2_mse: 1.0}")
            for name in terms:
                try:
                    parse_loss_term(name)
                except KeyError as exc:
                    raise ValueError(exc.args[0]) from None
        return terms

    @model_validator(mode="after")
    def _one_objective(self) -> TeacherStage:
        if self.levels and (self.multilevel_loss or self.clean_image):
            raise ValueError("levels (PyNET level-wise training) cannot be combined with multilevel_loss "
                             "or clean_image")
        if self.levels and not hasattr(TEACHERS.create(self.model, **self.config), "forward_levels"):
            raise ValueError(f"teacher {self.model!r} has no levels; a levels schedule needs a multi-level "
                             "model such as pynet")
        return self


def _known_loss(name: str) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return name


LossName = Annotated[str, AfterValidator(_known_loss)]


class FeaturePairSpec(Strict):
    """One feature-KD term: the student's tapped module output (through an adapter) vs the teacher's."""
    student: str = Field(description="student module path, e.g. up2")
    teacher: str = Field(description="teacher module path, e.g. up1")
    loss: LossName = Field("mse", description="mse (the LW-ISP paper's L2), nmse (unit-RMS L2), l1, cosine, ...")
    weight: float = Field(1.0, ge=0)


class FeatureKDSpec(Strict):
    """Feature distillation: ``weight * sum_i w_i * loss_i(adapter_i(student_i), teacher_i)``."""
    weight: float = Field(1.0, ge=0, description="beta: scales the sum of the pair terms")
    loss: LossName = Field("mse", description="loss of automatically paired taps")
    pairs: list[FeaturePairSpec] | None = Field(
        None, description="explicit pairs; omitted: the models' feature_taps paired by name, else by size")
    last: int | None = Field(None, ge=1, description="automatic pairs: keep only the last (finest) ones")

    @field_validator("pairs")
    @classmethod
    def _not_empty(cls, pairs: list[FeaturePairSpec] | None) -> list[FeaturePairSpec] | None:
        if pairs is not None and not pairs:
            raise ValueError("needs at least one {student, teacher} pair (or omit pairs for automatic pairing)")
        return pairs


class OnceForAllSpec(Strict):
    """Once-for-all training (ENERZAI, MAI 2021 Sec. 4.4): a detachable super-net head on the student's
    trunk trains jointly with it until its PSNR passes ``threshold_db``; then the student fine-tunes alone."""
    threshold_db: float = Field(description="detach the super-net once the moving average of its training-batch "
                                "PSNR reaches this (dB); .inf: never, -.inf: after the first step")
    head_width: int = Field(16, ge=1, description="channels of the super head's residual dense blocks")
    blocks: int = Field(2, ge=1, description="residual dense blocks in the super head")
    weight: float = Field(1.0, gt=0, description="weight of the super-net's loss (the student's train.losses)")
    trunk_tap: str | None = Field(None, description="module path where the student's trunk ends; default: the "
                                  "student's declared ModelInfo.trunk_tap")
    distill: float = Field(0.0, ge=0, description="after the detach, the super-net as it was then (frozen) "
                           "teaches the student's fine-tune: L1 to its output, this weight, while its training "
                           "PSNR is above the student's (the Once-for-All paper's distillation); 0: off")
    unpaired_raw: bool = Field(False, description="with distill: the frozen super-net also labels a batch of "
                               "unpaired RAW each fine-tune step (as student.distill.unpaired_raw, no teacher "
                               "needed); batch: student.distill.unpaired_batch or train.batch_size")

    @field_validator("threshold_db")
    @classmethod
    def _a_number(cls, value: float) -> float:
        if value != value:  # NaN
            raise ValueError("must be a number of dB (.inf: never detach)")
        return value

    @field_validator("unpaired_raw")
    @classmethod
    def _unpaired_needs_distill(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("distill", 0.0) == 0:  # distill is declared (so validated) first
            raise ValueError("the super-net labels the unpaired RAW through in-place distillation: set "
                             "once_for_all.distill > 0 (e.g. 0.5)")
        return value


class DistillSpec(Strict):
    """How the student learns from the teacher; every term is optional and weighted."""
    output_kd: float = Field(0.5, ge=0, description="weight of the teacher-output term")
    loss: LossName = Field("l1", description="loss of the teacher-output term")
    features: FeatureKDSpec | None = Field(None, description="feature distillation (taps + adapters)")
    teacher_input: Literal["auto", "raw", "target"] = Field(
        "auto", description="what the teacher sees: the student's RAW, or the clean target J (heterogeneous "
                            "KD); auto: target for a clean-image teacher, else raw")
    cache: bool = Field(False, description="cache the teacher's outputs on disk by content (teacher_cache/)")
    unpaired_raw: float = Field(
        0.0, ge=0, description="weight of the unpaired-RAW term (0 = off): each step a batch of RAW without a "
        "target goes through the teacher and the student, L1 between them (logged kd_unpaired). The RAW is the "
        "training images' sRGB unprocessed again with new white balance, exposure and noise (embedded data: the "
        "same sensor; other data: a new camera per patch) -- extra RAW of the training scenes, not new scenes; "
        "needs a RAW teacher")
    unpaired_batch: int | None = Field(None, ge=1, description="unpaired RAW patches (data.patch_size each) per "
                                       "step; default: train.batch_size")
    once_for_all: OnceForAllSpec | None = Field(
        None, description="train a detachable super-net head on the student's trunk first (null: off); needs "
                          "no teacher, and the saved student is the student alone")

    @property
    def active(self) -> bool:
        return (self.output_kd > 0 or (self.features is not None and self.features.weight > 0)
                or self.unpaired_raw > 0)


class StudentStage(ModelBlock):
    family: ClassVar[str] = "student"
    model: str = "smallnet"
    train: TrainSpec = Field(default_factory=TrainSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)

__all__ = [
    "DEFAULT_SPLITS", "DataSpec", "ModelBlock", "LevelSpec", "TeacherStage", "LossName", "FeaturePairSpec",
    "FeatureKDSpec", "OnceForAllSpec", "DistillSpec", "StudentStage",
]

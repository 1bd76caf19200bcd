"""The recipe: one YAML file that reads top to bottom, validated strictly.

Every block forbids unknown keys, so a typo is an error naming its key path, never a silently ignored
setting.  YAML is read with ``safe_load``; nothing in a recipe is imported or called by name except
registered models and losses.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from compress.prune import PruneTarget
from distill.data.bayer import PATTERNS
from distill.losses import LOSSES
from distill.trainer import TrainSpec


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyPathError(ValueError):
    """A whole-recipe check that blames one key: the error names ``key_path``, not the recipe root."""

    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(message)
        self.key_path = key_path


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
            from compress.checkpoint import CheckpointError
            from recipes.teacher_checkpoint import check_teacher_checkpoint

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
            from teachers.aaunet import parse_loss_term

            if not terms:
                raise ValueError("needs at least one term, e.g. {l1_mse: 1.0, l2_mse: 1.0}")
            for name in terms:
                try:
                    parse_loss_term(name)
                except KeyError as exc:
                    raise ValueError(exc.args[0]) from None
        return terms

    @model_validator(mode="after")
    def _one_objective(self) -> "TeacherStage":
        if self.levels and (self.multilevel_loss or self.clean_image):
            raise ValueError("levels (PyNET level-wise training) cannot be combined with multilevel_loss "
                             "or clean_image")
        from teachers import TEACHERS

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
    loss: LossName = Field("mse", description="mse (the LW-ISP paper's L2), l1, cosine, ...")
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


class DistillSpec(Strict):
    """How the student learns from the teacher; every term is optional and weighted."""

    output_kd: float = Field(0.5, ge=0, description="weight of the teacher-output term")
    loss: LossName = Field("l1", description="loss of the teacher-output term")
    features: FeatureKDSpec | None = Field(None, description="feature distillation (taps + adapters)")
    teacher_input: Literal["auto", "raw", "target"] = Field(
        "auto", description="what the teacher sees: the student's RAW, or the clean target J (heterogeneous "
                            "KD); auto: target for a clean-image teacher, else raw")
    cache: bool = Field(False, description="cache the teacher's outputs on disk by content (teacher_cache/)")

    @property
    def active(self) -> bool:
        return self.output_kd > 0 or (self.features is not None and self.features.weight > 0)


class StudentStage(ModelBlock):
    family: ClassVar[str] = "student"
    model: str = "smallnet"
    train: TrainSpec = Field(default_factory=TrainSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)


class SensitivitySpec(Strict):
    """Prune each layer group alone by ``ratio`` and log the held-out PSNR drop (table + bar plot)."""

    ratio: float = Field(0.3, gt=0.0, lt=0.95)
    derive_ratios: bool = Field(False, description="prune the least sensitive layers hardest: rank-based "
                                "multipliers (1.5x .. 0.5x) of the ratio; explicit layer_ratios win")


class PruneStage(PruneTarget):
    steps: int = Field(1, ge=1, le=20, description="iterative pruning: this many prune + KD fine-tune rounds")
    finetune: TrainSpec = Field(default_factory=lambda: TrainSpec(steps=100),
                                description="fine-tune after pruning; its steps are split over the rounds")
    kd_weight: float = Field(0.5, ge=0, description="output KD from the unpruned model during fine-tune")
    sensitivity: SensitivitySpec | None = None

    @property
    def target(self) -> PruneTarget:
        return PruneTarget(**self.model_dump(include=set(PruneTarget.model_fields)))


class FoldStage(Strict):
    enabled: bool = True
    before_prune: bool = Field(False, description="fold first, then prune the folded model")


TFLiteVariant = Literal["int8", "int16x8", "float16", "dynamic", "fp32"]
# The x86 path, built next to the TFLite variants: ONNX Runtime QDQ models and Neural Compressor's
# PT2E static INT8 of the PyTorch model (compress.onnx_quant, compress.inc_quant).
X86Variant = Literal["onnx_int8", "onnx_int16", "inc_int8"]
GateVariant = Literal["int8", "int16x8", "float16", "dynamic", "fp32", "onnx_int8", "onnx_int16", "inc_int8"]
# Default budgets per variant (docs/quantization.md): PSNR drop vs the float model of the same runtime
# (fp32 TFLite, fp32 ONNX, PyTorch) on the held-out crops, and parity (PSNR) vs the PyTorch model.
# fp32's parity gate is export.parity_min_db.
DEFAULT_MAX_DROP_DB: dict[str, float] = {"int8": 1.0, "int16x8": 0.1, "float16": 0.05, "dynamic": 0.5, "fp32": 0.0,
                                         "onnx_int8": 1.0, "onnx_int16": 0.1, "inc_int8": 1.0}
DEFAULT_MIN_PARITY_DB: dict[str, float] = {"int8": 30.0, "int16x8": 45.0, "float16": 50.0, "dynamic": 30.0,
                                           "onnx_int8": 30.0, "onnx_int16": 45.0, "inc_int8": 30.0}


class QuantGateSpec(Strict):
    """Per-variant budgets; a variant over either fails the export stage and no bundle is written.

    Give only the variants to change: ``{max_drop_db: {int8: 0.1}}`` keeps the other defaults.
    """

    max_drop_db: dict[GateVariant, float] = Field(
        default_factory=dict, description="PSNR drop vs the float model of the same runtime, dB "
                                          "(defaults: DEFAULT_MAX_DROP_DB)")
    min_parity_db: dict[GateVariant, float] = Field(
        default_factory=dict, description="PSNR vs the PyTorch model, dB (defaults: DEFAULT_MIN_PARITY_DB; "
                                          "fp32 uses export.parity_min_db)")

    def drop_budget(self, variant: str) -> float:
        return self.max_drop_db.get(variant, DEFAULT_MAX_DROP_DB[variant])  # type: ignore[call-overload]

    def parity_budget(self, variant: str, fp32_min_db: float) -> float:
        default = DEFAULT_MIN_PARITY_DB.get(variant, fp32_min_db)
        return self.min_parity_db.get(variant, default)  # type: ignore[call-overload]


class SelectiveSpec(Strict):
    """Keep the most error-prone INT8 layers in float until the INT8 drop is within ``max_drop_db``."""

    max_drop_db: float = Field(ge=0, description="PSNR drop vs the fp32 TFLite model the INT8 model must reach")
    max_float_layers: int = Field(8, ge=1, description="give up (the stage fails) after this many float layers")
    probe: int = Field(8, ge=1, description="layers tried per greedy step, best measured-alone first "
                                            "(each costs one re-quantization and one evaluation)")


class QATSpec(Strict):
    """Quantization-aware fine-tune before export (``compress.qat``): TFLite-INT8 fake quantization,
    optional output KD from the float model; the fine-tuned float weights are what the export converts."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(steps=100, lr=1e-4),
                             description="the fine-tune (a few percent of the student's steps, a low lr)")
    kd_weight: float = Field(0.5, ge=0, description="output L1 to the float model before QAT (0: off)")
    freeze_fraction: float = Field(0.25, ge=0, le=1,
                                   description="last fraction of the steps with activation ranges fixed")


class QuantizeStage(Strict):
    mode: TFLiteVariant = Field("int8", description="the TFLite variant shipped in the hand-off bundle")
    variants: list[TFLiteVariant] = Field(default_factory=list,
                                          description="more variants built, gated and logged (not shipped)")
    int8_io: bool = Field(True, description="int8 model input/output (else float I/O around an int8 body)")
    calibration_frames: int = Field(32, ge=1, description="RAW crops from the training data")
    calibration_selection: Literal["random", "spread"] = Field(
        "random", description="random crops, or crops from every image spread over its brightness range")
    selective: SelectiveSpec | None = Field(None, description="selective precision for the int8 variant")
    qat: QATSpec | None = Field(None, description="quantization-aware fine-tune before export")
    x86: list[X86Variant] = Field(default_factory=list,
                                  description="x86 models scored next to the TFLite ones: onnx_int8, "
                                              "onnx_int16 (ONNX Runtime QDQ), inc_int8 (Neural Compressor)")
    inc_max_trials: int = Field(4, ge=1, description="Neural Compressor autotune trials for inc_int8")
    xnnpack_rewrite: bool = Field(True, description="convert int8 from an ONNX copy with PReLU/HardSwish/"
                                                    "Clip/Max/Min written in ops XNNPACK runs in INT8")
    gate: QuantGateSpec = Field(default_factory=QuantGateSpec)

    @model_validator(mode="after")
    def _selective_needs_int8(self) -> "QuantizeStage":
        if self.selective is not None and "int8" not in self.built_variants():
            raise KeyPathError("selective", "selective precision works on the int8 variant: set "
                               "mode: int8 or add int8 to variants")
        return self

    def built_variants(self) -> list[str]:
        """fp32 first (always built: the reference), then the shipped mode, then the extra variants."""
        return list(dict.fromkeys(["fp32", self.mode, *self.variants]))


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


class RegisterSpec(Strict):
    """Register the finished bundle as an MLflow model version (needs a database store or a server)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="registered model name")
    alias: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
                              description="alias to point at the new version, e.g. candidate")


with warnings.catch_warnings():  # the recipe key is ``register``; pydantic warns it hides ABCMeta.register
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class HandoffStage(Strict):
        name: str | None = Field(None, description="bundle folder name; defaults to the recipe name")
        register: RegisterSpec | None = Field(None, description="register the bundle in the MLflow model registry")


STAGE_ORDER = ("teacher", "student", "prune", "fold", "quantize", "export", "handoff")


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 0
    run_until: Literal["teacher", "student", "prune", "fold", "quantize", "export", "handoff"] = Field(
        "handoff", description="last stage to run (e.g. 'teacher' for a teacher-only recipe)")
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: TeacherStage | None = None
    student: StudentStage = Field(default_factory=StudentStage)
    prune: PruneStage | None = None
    fold: FoldStage = Field(default_factory=FoldStage)
    quantize: QuantizeStage = Field(default_factory=QuantizeStage)
    export: ExportStage = Field(default_factory=ExportStage)
    handoff: HandoffStage = Field(default_factory=HandoffStage)
    sweep: dict[str, list[Any]] | None = Field(
        None, description="dotted recipe key -> values; one run per point (see recipes/sweep.py)")
    sweep_mode: Literal["grid", "zip"] = Field("grid", description="grid: every combination; zip: i-th values")

    @field_validator("sweep", mode="before")
    @classmethod
    def _dotted_sweep_keys(cls, value: Any) -> Any:
        """Accept nested mappings (``--set sweep.prune.ratio=[..]``) as dotted keys."""
        if isinstance(value, dict):
            from recipes.loader import flatten

            return flatten(value)
        return value

    @field_validator("sweep")
    @classmethod
    def _sweep_values(cls, value: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if value is not None:
            if not value:
                raise ValueError("needs at least one key: a list of values, e.g. {prune.ratio: [0.25, 0.5]}")
            for key, values in value.items():
                if not values:
                    raise KeyPathError(key, "needs at least one value")
                if key.split(".")[0] in ("sweep", "sweep_mode", "name"):
                    raise KeyPathError(key, "cannot be swept")
        return value

    @model_validator(mode="after")
    def _teacher_fits_student(self) -> "Recipe":
        runs_student = STAGE_ORDER.index(self.run_until) >= STAGE_ORDER.index("student")
        if self.run_until == "teacher" and self.teacher is None:
            raise KeyPathError("run_until", "run_until: teacher needs a teacher block")
        distill = self.student.distill
        if not runs_student:
            return self
        if self.teacher is None:
            if distill.features is not None:
                raise KeyPathError("student.distill.features", "feature distillation needs a teacher block")
            return self
        if self.teacher.clean_image and distill.output_kd > 0:
            raise KeyPathError("student.distill.output_kd",
                               "needs a RAW teacher: a clean-image teacher sees the target J, not RAW, so set "
                               "output_kd: 0 (it supervises through feature distillation)")
        if distill.teacher_input == "raw" and self.teacher.clean_image:
            raise KeyPathError("student.distill.teacher_input", "a clean-image teacher takes the target RGB J: "
                               "use target (or auto)")
        if distill.teacher_input == "target" and not self.teacher.clean_image:
            raise KeyPathError("student.distill.teacher_input", f"teacher {self.teacher.model!r} is trained on "
                               "RAW (clean_image: false), so it cannot be run on the target RGB")
        if distill.features is not None and distill.features.pairs:
            self._check_tap_paths(distill.features.pairs)
        return self

    def _check_tap_paths(self, pairs: list[FeaturePairSpec]) -> None:
        """Every named module exists (models built on the meta device: no memory, no init cost)."""
        import torch

        from distill.taps import TapError, resolve_modules
        from students import STUDENTS
        from teachers import TEACHERS

        assert self.teacher is not None
        with torch.device("meta"):
            models = {"student": STUDENTS.create(self.student.model, **self.student.config),
                      "teacher": TEACHERS.create(self.teacher.model, **self.teacher.config)}
        for i, pair in enumerate(pairs):
            for side in ("student", "teacher"):
                try:
                    resolve_modules(models[side], [getattr(pair, side)], owner=side)
                except TapError as exc:
                    raise KeyPathError(f"student.distill.features.pairs.{i}.{side}", str(exc)) from None

    @property
    def teacher_input(self) -> Literal["raw", "target"]:
        """What the teacher sees in the student stage."""
        choice = self.student.distill.teacher_input
        if choice == "auto":
            return "target" if self.teacher is not None and self.teacher.clean_image else "raw"
        return choice

    @property
    def bundle_name(self) -> str:
        return self.handoff.name or self.name

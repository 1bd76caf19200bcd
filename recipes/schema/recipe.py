"""The whole recipe: its blocks in stage order and the checks that span several blocks."""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from distill.taps import TapError, resolve_modules
from recipes.schema.base import KeyPathError, Strict, flatten
from recipes.schema.compression import ExportStage, FoldStage, HandoffStage, PruneStage, QuantizeStage
from recipes.schema.models import DataSpec, FeaturePairSpec, StudentStage, TeacherStage
from teachers.registry import STUDENTS, TEACHERS

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
    def _once_for_all_has_a_trunk(self) -> Recipe:
        """The super-net head's trunk tap: the recipe's, else the student's declared one; it must exist."""
        ofa = self.student.distill.once_for_all
        if ofa is None or STAGE_ORDER.index(self.run_until) < STAGE_ORDER.index("student"):
            return self
        key = "student.distill.once_for_all.trunk_tap"
        tap = self.once_for_all_tap
        if tap is None:
            raise KeyPathError(key, f"student {self.student.model!r} declares no trunk_tap (ModelInfo.trunk_tap): "
                               "name the module path where its trunk ends and its own RGB top begins")
        with torch.device("meta"):
            student = STUDENTS.create(self.student.model, **self.student.config)
        try:
            resolve_modules(student, [tap], owner="student")
        except TapError as exc:
            raise KeyPathError(key, str(exc)) from None
        return self

    @property
    def once_for_all_tap(self) -> str | None:
        """Where the once-for-all super head reads the student's trunk (None: once-for-all is off or the
        student declares no trunk)."""
        ofa = self.student.distill.once_for_all
        if ofa is None:
            return None
        return ofa.trunk_tap or STUDENTS.info(self.student.model).trunk_tap

    @model_validator(mode="after")
    def _teacher_fits_student(self) -> Recipe:
        runs_student = STAGE_ORDER.index(self.run_until) >= STAGE_ORDER.index("student")
        if self.run_until == "teacher" and self.teacher is None:
            raise KeyPathError("run_until", "run_until: teacher needs a teacher block")
        distill = self.student.distill
        if not runs_student:
            return self
        if self.teacher is None:
            if distill.features is not None:
                raise KeyPathError("student.distill.features", "feature distillation needs a teacher block")
            if distill.unpaired_raw > 0:
                raise KeyPathError("student.distill.unpaired_raw", "unpaired RAW distillation needs a teacher "
                                   "block: the teacher labels the RAW that has no target (or set it to 0)")
            return self
        if self.teacher.clean_image and distill.unpaired_raw > 0:
            raise KeyPathError("student.distill.unpaired_raw", "needs a RAW teacher: a clean-image teacher sees "
                               "the target J, which unpaired RAW does not have")
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

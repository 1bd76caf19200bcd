"""One module per recipe stage; ``STAGES`` maps a stage name to its function.

A stage is ``fn(ctx, folder) -> (metrics, result)``: it reads earlier stages' typed results from the
run context (``recipes.context``), writes into its own folder and returns its metrics and its result
(``recipes.results``).  The runner caches, tracks and resumes stages; stages never import the runner.
"""
from __future__ import annotations

from recipes.context import StageFn
from recipes.stages.export import export_stage
from recipes.stages.fold import fold_stage
from recipes.stages.handoff import handoff_stage
from recipes.stages.prune import prune_stage
from recipes.stages.quantize import quantize_stage
from recipes.stages.student import student_stage
from recipes.stages.teacher import teacher_stage

STAGES: dict[str, StageFn] = {
    "teacher": teacher_stage,
    "student": student_stage,
    "prune": prune_stage,
    "fold": fold_stage,
    "quantize": quantize_stage,
    "export": export_stage,
    "handoff": handoff_stage,
}

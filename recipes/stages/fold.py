"""Fold stage: re-parameterizable blocks and Conv+BN into single convs, checked to compute the same."""
from __future__ import annotations

from pathlib import Path

import torch

from compress.checkpoint import load_model
from compress.fold import fold_model
from recipes.context import RunContext, StageError
from recipes.results import ModelResult
from recipes.stages.common import finish_model_stage

MAX_FOLD_ERROR = 1e-4


def fold_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], ModelResult]:
    model, spec = load_model(ctx.model_dir())
    folded, counts = fold_model(model)
    probe = ctx.data.full_images()[0][0].unsqueeze(0)  # a size every model in the zoo accepts
    with torch.no_grad():
        max_diff = float((model(probe) - folded(probe)).abs().max())
    if max_diff > MAX_FOLD_ERROR:
        raise StageError(f"fold: folded model differs from the unfolded one by {max_diff:.2e} (limit 1e-4)")
    spec = spec.model_copy(update={"folded": True})
    extra = {**{k: float(v) for k, v in counts.items()}, "fold_max_abs_diff": max_diff}
    return finish_model_stage(ctx, folder, "fold", folded, spec, extra)

"""What every model-holding stage does alike: score on the held-out data, save, log, checkpoint."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import torch
from torch import nn

from compress.checkpoint import ModelSpec, save_model
from compress.runtime.profile import count_macs, count_params, size_kb
from distill.evaluation import DEFAULT_TASK, Task, evaluate, predict
from distill.visualize import sample_grid, save_png
from recipes.context import RunContext
from recipes.ddp import checkpoint_path
from recipes.results import ModelResult
from recipes.schema import Recipe


def input_shape(recipe: Recipe, task: Task = DEFAULT_TASK) -> tuple[int, int, int, int]:
    """The export input (packed RAW), or the RGB it covers for a clean-image model."""
    h, w = recipe.export.input_size
    return (1, 3, 2 * h, 2 * w) if task.clean_image else (1, 4, h, w)


def quality(ctx: RunContext, model: nn.Module, task: Task = DEFAULT_TASK) -> dict[str, float]:
    """``psnr``/``ssim`` on the held-out centre crops that the export stage also scores (so the key means
    the same thing at every stage), and ``psnr_full``/``ssim_full`` on (nearly) whole held-out images."""
    raws, rgbs = ctx.eval_crops()
    crops = evaluate(model, list(zip(torch.from_numpy(raws), torch.from_numpy(rgbs))), task)
    full = evaluate(model, ctx.data.full_images(), task)
    return {**crops, "psnr_full": full["psnr"], "ssim_full": full["ssim"]}


def model_metrics(ctx: RunContext, model: nn.Module, model_dir: Path, task: Task = DEFAULT_TASK) -> dict[str, float]:
    """Quality on the held-out images plus the size figures every model stage reports."""
    metrics = quality(ctx, model, task)
    metrics.update(
        params=count_params(model),
        macs=count_macs(model, input_shape(ctx.recipe, task)),
        size_kb=size_kb(model_dir / "model.pt"),
    )
    return metrics


def log_samples(ctx: RunContext, model: nn.Module, folder: Path, stage: str, task: Task = DEFAULT_TASK) -> None:
    pair = ctx.data.full_images()[0]
    x, target = task.inputs_targets(pair[0].unsqueeze(0), pair[1].unsqueeze(0))
    out = predict(model, x, task)[0].numpy()
    path = save_png(sample_grid(pair[0].numpy(), out, target[0].numpy()), folder / f"samples_{stage}.png")
    ctx.tracker.log_artifact(path, artifact_path="samples")


def finish_model_stage(ctx: RunContext, folder: Path, stage: str, model: nn.Module, spec: ModelSpec,
                       extra: dict[str, float] | None = None, task: Task = DEFAULT_TASK,
                       ) -> tuple[dict[str, float], ModelResult]:
    """Save the stage's model, score it, log metrics, checkpoint and a sample image."""
    model_dir = save_model(model, spec, folder / "model")
    metrics = {**model_metrics(ctx, model, model_dir, task), **(extra or {})}
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_artifact(model_dir, artifact_path="checkpoint")
    log_samples(ctx, model, folder, stage, task)
    return metrics, ModelResult(model=model_dir)


def resumable(ctx: RunContext, folder: Path, name: str = "checkpoint") -> dict[str, Any]:
    """``train()`` arguments that checkpoint into the stage folder (and resume from it after a kill)."""
    run = mlflow.active_run()
    return {"checkpoint_path": checkpoint_path(ctx, folder, name),
            "checkpoint_extra": {"mlflow_run_id": run.info.run_id if run else ""}}


def train_log(ctx: RunContext, prefix: str = "") -> Callable[[dict[str, float], int], None]:
    """A ``train()`` logger that sends the step's metrics to the stage's MLflow run."""
    return lambda metrics, step: ctx.tracker.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=step)

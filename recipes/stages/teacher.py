"""Teacher stage: train the teacher (plainly, level by level as PyNET, with AA-UNet's multi-level loss,
or as a clean-image teacher g(J) -> J), or load a pre-trained one."""
from __future__ import annotations

import functools
from pathlib import Path

from compress.checkpoint import ModelSpec, build_model, save_model
from distill.evaluation import Task, evaluate
from distill.trainer import train
from recipes.context import RunContext
from recipes.metric_keys import level_prefix
from recipes.results import ModelResult
from recipes.stages.common import finish_model_stage, quality, resumable, train_log
from recipes.teacher_checkpoint import load_teacher_checkpoint
from teachers.aaunet import aaunet_multilevel_loss


def teacher_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], ModelResult]:
    """Train (or load) the teacher; ``psnr_initial`` is logged before training for comparison."""
    cfg = ctx.recipe.teacher
    assert cfg is not None
    task = Task(clean_image=cfg.clean_image, multilevel=cfg.multilevel_loss is not None)
    if cfg.checkpoint is not None:  # pre-trained: load (validated against model/config), score, keep
        model, spec = load_teacher_checkpoint(cfg.checkpoint, cfg.model, cfg.config)
        ctx.tracker.log_params({"teacher_checkpoint": str(cfg.checkpoint)})
        return finish_model_stage(ctx, folder, "teacher", model, spec, {}, task)
    spec = ModelSpec(family="teacher", name=cfg.model, config=cfg.config)
    model = build_model(spec)
    extra = {"psnr_initial": quality(ctx, model, task)["psnr"]}
    ctx.tracker.log_metrics(extra)
    if cfg.levels:
        eval_pairs = ctx.data.full_images()
        for step in cfg.levels:
            level_task = Task(level=step.level)
            prefix = level_prefix(step.level)
            result = train(model, ctx.data.train_set, step.train, seed=ctx.recipe.seed + step.level,
                           log=train_log(ctx, prefix), desc=f"teacher level {step.level}", task=level_task,
                           **resumable(ctx, folder, f"checkpoint-level{step.level}"))
            scores = evaluate(model, eval_pairs, level_task)
            level_metrics = {f"{prefix}psnr": scores["psnr"], f"{prefix}ssim": scores["ssim"],
                             f"{prefix}final_loss": result.final_loss}
            ctx.tracker.log_metrics(level_metrics)
            extra.update(level_metrics)
            save_model(model, spec, folder / f"level{step.level}")  # the next level starts from these weights
    else:
        criterion = None
        if cfg.multilevel_loss is not None:
            criterion = functools.partial(aaunet_multilevel_loss, weights=cfg.multilevel_loss)
        result = train(model, ctx.data.train_set, cfg.train, seed=ctx.recipe.seed, log=train_log(ctx),
                       desc="teacher", task=task, criterion=criterion, **resumable(ctx, folder))
        extra["final_loss"] = result.final_loss
    return finish_model_stage(ctx, folder, "teacher", model, spec, extra, task)

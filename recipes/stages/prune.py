"""Prune stage: torch-pruning to the recipe's target in ``steps`` rounds, each followed by a KD
fine-tune from the unpruned model; optionally a layer sensitivity analysis first."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from compress.checkpoint import load_model
from compress.pruning.prune import PruneError, prune_model, round_targets
from compress.pruning.sensitivity import derive_layer_weights, layer_sensitivity, plot_sensitivity, sensitivity_markdown
from compress.runtime.profile import count_macs, count_params
from distill.batches import training_batches
from distill.distiller import Distiller
from distill.trainer import TrainSpec, train
from recipes.context import RunContext, StageError
from recipes.metric_keys import round_key
from recipes.results import PruneResult
from recipes.schema import PruneStage
from recipes.stages.common import finish_model_stage, input_shape, quality, resumable, train_log


def _taylor_grad_fn(ctx: RunContext, spec: TrainSpec, batches: int = 4) -> Callable[[nn.Module], None]:
    """Gradients of the fine-tune loss on a few training batches, for first-order Taylor importance."""
    criterion = spec.criterion()

    def accumulate(model: nn.Module) -> None:
        stream = training_batches(ctx.data.train_set, spec.batch_size, ctx.recipe.seed + 3)
        model.train()
        for _ in range(batches):
            raw, rgb = next(stream)
            loss, _ = criterion(model(raw), rgb)
            loss.backward()
        model.eval()

    return accumulate


def _log_sensitivity(ctx: RunContext, folder: Path, model: nn.Module, example: torch.Tensor,
                     cfg: PruneStage) -> dict[str, float]:
    """Prune each layer group alone, log the table and bar plot; returns derived per-layer ratio weights."""
    assert cfg.sensitivity is not None
    spec = cfg.sensitivity
    rows = layer_sensitivity(model, example, lambda m: quality(ctx, m)["psnr"], spec.ratio, cfg.target)
    (folder / "sensitivity.json").write_text(json.dumps(rows, indent=2))
    (folder / "sensitivity.md").write_text(sensitivity_markdown(rows))
    plot = plot_sensitivity(rows, folder / "sensitivity.png", spec.ratio)
    for path in (folder / "sensitivity.json", folder / "sensitivity.md", plot):
        ctx.tracker.log_artifact(path, artifact_path="sensitivity")
    ctx.tracker.log_metrics({"sensitivity_max_drop_db": max(float(r["drop_db"]) for r in rows),
                             "sensitivity_layers": float(len(rows))})
    return derive_layer_weights(rows) if spec.derive_ratios else {}


def prune_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], PruneResult]:
    cfg = ctx.recipe.prune
    assert cfg is not None
    model, spec = load_model(ctx.model_dir())
    dense = copy.deepcopy(model)
    shape = input_shape(ctx.recipe)
    example = torch.zeros(shape)
    before = {"params_before": count_params(model), "macs_before": count_macs(model, shape),
              "psnr_before": quality(ctx, model)["psnr"]}
    ctx.tracker.log_metrics(before)
    target = cfg.target
    if cfg.sensitivity is not None:
        derived = _log_sensitivity(ctx, folder, model, example, cfg)
        if derived:
            target = target.model_copy(update={"layer_weights": {**derived, **target.layer_weights}})
            ctx.tracker.log_params({"prune_derived_layer_weights": json.dumps(
                {k: round(v, 3) for k, v in derived.items()})[:6000]})
    grad_fn = _taylor_grad_fn(ctx, cfg.finetune) if target.importance == "taylor" else None
    finetune = cfg.finetune.model_copy(update={"steps": cfg.finetune.steps // cfg.steps})
    extra: dict[str, float] = dict(before)
    widths: dict[str, int] = {}
    for i, round_target in enumerate(round_targets(target, cfg.steps), start=1):
        try:
            widths = prune_model(model, example, round_target, grad_fn)
        except PruneError as exc:
            raise StageError(f"prune: round {i}: {exc}") from None
        pruned = quality(ctx, model)["psnr"]
        kd = Distiller(dense, output_weight=cfg.kd_weight) if cfg.kd_weight > 0 else None
        train(model, ctx.data.train_set, finetune, seed=ctx.recipe.seed + 2 + i, kd=kd,
              log=train_log(ctx, round_key(i, "") if cfg.steps > 1 else ""), desc=f"prune round {i} fine-tune",
              **resumable(ctx, folder, f"checkpoint-round{i}"))
        tuned = quality(ctx, model)["psnr"]
        round_metrics = {round_key(i, "psnr_pruned"): pruned, round_key(i, "psnr"): tuned,
                         round_key(i, "macs"): float(count_macs(model, shape))}
        extra.update(round_metrics)
        ctx.tracker.log_metrics(round_metrics)
    extra["psnr_before_finetune"] = extra[round_key(cfg.steps, "psnr_pruned")]
    spec = spec.model_copy(update={"widths": widths, "widths_after_fold": spec.folded})
    metrics, result = finish_model_stage(ctx, folder, "prune", model, spec, extra)
    metrics["macs_reduction"] = 1.0 - metrics["macs"] / max(before["macs_before"], 1)
    metrics["params_reduction"] = 1.0 - metrics["params"] / max(before["params_before"], 1)
    metrics["psnr_drop_db"] = before["psnr_before"] - metrics["psnr"]
    ctx.tracker.log_metrics({k: metrics[k] for k in ("macs_reduction", "params_reduction", "psnr_drop_db")})
    plan = folder / "channel_plan.json"
    plan.write_text(json.dumps(widths, indent=2))
    ctx.tracker.log_artifact(plan)
    return metrics, PruneResult(model=result.model, channel_plan=plan)

"""The seven stages of a recipe. Each takes the run context and its own folder, and returns
(metrics, outputs); the runner wraps it in a nested MLflow run and caches the result.

Every stage that holds a model reports the same keys (psnr, ssim, params, macs, size_kb) so MLflow's
compare view lines them up; MACs are counted at the export input size.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from compress.checkpoint import ModelSpec, build_model, load_model, save_model
from compress.fold import fold_model
from compress.profile import count_macs, count_params, size_kb
from compress.prune import prune_model
from distill.adapters import AdapterError
from distill.distiller import Distiller
from distill.taps import TapError
from distill.trainer import DEFAULT_TASK, Task, TrainSpec, evaluate, predict, train
from distill.visualize import sample_grid, save_png
from recipes.runner import RunContext, StageError, git_sha
from recipes.loader import recipe_hash
from recipes.schema import PruneStage, Recipe


@dataclass
class RunData:
    train_pairs: list[Any]
    eval_pairs: list[Any]
    train_set: Any

    def eval_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.from_numpy(p.raw), torch.from_numpy(p.rgb)) for p in self.eval_pairs]


def load_run_data(recipe: Recipe) -> RunData:
    from distill.data.datasets import PairedPatchDataset
    from distill.data.loaders import load_dataset

    spec = recipe.data
    train_split, eval_split = spec.splits()
    options: dict[str, Any] = {"pattern": spec.pattern}
    if spec.kind == "embedded":
        options.update(seed=recipe.seed, max_side=spec.max_side)
    if spec.kind == "paired":
        options.update(raw_dir=spec.raw_dir, rgb_dir=spec.rgb_dir, black_level=spec.black_level,
                       white_level=spec.white_level)
    train_pairs = load_dataset(spec.kind, spec.root, train_split, **options)
    eval_pairs = load_dataset(spec.kind, spec.root, eval_split, **options)
    if spec.max_eval_images:
        eval_pairs = eval_pairs[: spec.max_eval_images]
    train_set = PairedPatchDataset(train_pairs, patch_size=spec.patch_size,
                                   patches_per_image=spec.patches_per_image, seed=recipe.seed,
                                   crop_sets=spec.crop_sets)
    return RunData(train_pairs=train_pairs, eval_pairs=eval_pairs, train_set=train_set)


def _input_shape(recipe: Recipe, task: Task = DEFAULT_TASK) -> tuple[int, int, int, int]:
    """The export input (packed RAW), or the RGB it covers for a clean-image model."""
    h, w = recipe.export.input_size
    return (1, 3, 2 * h, 2 * w) if task.clean_image else (1, 4, h, w)


def _full_image_tensors(ctx: RunContext, multiple: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Held-out images centre-cropped to a multiple of 32 packed pixels (PyNET's five poolings,
    MobileNetV2's stride 32): a size every model in the zoo accepts."""
    pairs = []
    for raw, rgb in ctx.data.eval_tensors():
        h, w = raw.shape[1] // multiple * multiple, raw.shape[2] // multiple * multiple
        y, x = (raw.shape[1] - h) // 2, (raw.shape[2] - w) // 2
        pairs.append((raw[:, y : y + h, x : x + w], rgb[:, 2 * y : 2 * (y + h), 2 * x : 2 * (x + w)]))
    return pairs


def _quality(ctx: RunContext, model: nn.Module, task: Task = DEFAULT_TASK) -> dict[str, float]:
    """``psnr``/``ssim`` on the held-out centre crops that the export stage also scores (so the key means
    the same thing at every stage), and ``psnr_full``/``ssim_full`` on (nearly) whole held-out images."""
    raws, rgbs = eval_crops(ctx)
    crops = evaluate(model, list(zip(torch.from_numpy(raws), torch.from_numpy(rgbs))), task)
    full = evaluate(model, _full_image_tensors(ctx), task)
    return {**crops, "psnr_full": full["psnr"], "ssim_full": full["ssim"]}


def _model_metrics(ctx: RunContext, model: nn.Module, model_dir: Path, task: Task = DEFAULT_TASK) -> dict[str, float]:
    """Quality on the held-out images plus the size figures every model stage reports."""
    metrics = _quality(ctx, model, task)
    metrics.update(
        params=count_params(model),
        macs=count_macs(model, _input_shape(ctx.recipe, task)),
        size_kb=size_kb(model_dir / "model.pt"),
    )
    return metrics


def _log_samples(ctx: RunContext, model: nn.Module, folder: Path, stage: str, task: Task = DEFAULT_TASK) -> None:
    pair = _full_image_tensors(ctx)[0]
    x, target = task.inputs_targets(pair[0].unsqueeze(0), pair[1].unsqueeze(0))
    out = predict(model, x, task)[0].numpy()
    path = save_png(sample_grid(pair[0].numpy(), out, target[0].numpy()), folder / f"samples_{stage}.png")
    ctx.tracker.log_artifact(path, artifact_path="samples")


def _finish_model_stage(ctx: RunContext, folder: Path, stage: str, model: nn.Module, spec: ModelSpec,
                        extra: dict[str, float] | None = None, task: Task = DEFAULT_TASK,
                        ) -> tuple[dict[str, float], dict[str, str]]:
    model_dir = save_model(model, spec, folder / "model")
    metrics = {**_model_metrics(ctx, model, model_dir, task), **(extra or {})}
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_artifact(model_dir, artifact_path="checkpoint")
    _log_samples(ctx, model, folder, stage, task)
    return metrics, {"model": str(model_dir)}


def _resumable(ctx: RunContext, folder: Path, name: str = "checkpoint") -> dict[str, Any]:
    """``train()`` arguments that checkpoint into the stage folder (and resume from it after a kill)."""
    import mlflow

    from recipes.ddp import checkpoint_path

    run = mlflow.active_run()
    return {"checkpoint_path": checkpoint_path(ctx, folder, name),
            "checkpoint_extra": {"mlflow_run_id": run.info.run_id if run else ""}}


def _train_log(ctx: RunContext, prefix: str = ""):
    return lambda metrics, step: ctx.tracker.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=step)


def teacher_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Train the teacher: plainly, level by level (PyNET), with a multi-level loss (AA-UNet), or as a
    clean-image teacher g(J) -> J.  ``psnr_initial`` is logged before training for comparison."""
    cfg = ctx.recipe.teacher
    assert cfg is not None
    task = Task(clean_image=cfg.clean_image, multilevel=cfg.multilevel_loss is not None)
    if cfg.checkpoint is not None:  # pre-trained: load (validated against model/config), score, keep
        from recipes.teacher_checkpoint import load_teacher_checkpoint

        model, spec = load_teacher_checkpoint(cfg.checkpoint, cfg.model, cfg.config)
        ctx.tracker.log_params({"teacher_checkpoint": str(cfg.checkpoint)})
        return _finish_model_stage(ctx, folder, "teacher", model, spec, {}, task)
    spec = ModelSpec(family="teacher", name=cfg.model, config=cfg.config)
    model = build_model(spec)
    extra = {"psnr_initial": _quality(ctx, model, task)["psnr"]}
    ctx.tracker.log_metrics(extra)
    if cfg.levels:
        eval_pairs = _full_image_tensors(ctx)
        for step in cfg.levels:
            level_task = Task(level=step.level)
            prefix = f"level{step.level}_"
            result = train(model, ctx.data.train_set, step.train, seed=ctx.recipe.seed + step.level,
                           log=_train_log(ctx, prefix), desc=f"teacher level {step.level}", task=level_task,
                           **_resumable(ctx, folder, f"checkpoint-level{step.level}"))
            scores = evaluate(model, eval_pairs, level_task)
            level_metrics = {f"{prefix}psnr": scores["psnr"], f"{prefix}ssim": scores["ssim"],
                             f"{prefix}final_loss": result.final_loss}
            ctx.tracker.log_metrics(level_metrics)
            extra.update(level_metrics)
            save_model(model, spec, folder / f"level{step.level}")  # the next level starts from these weights
    else:
        criterion = None
        if cfg.multilevel_loss is not None:
            from teachers.aaunet import aaunet_multilevel_loss

            weights = cfg.multilevel_loss
            criterion = lambda outputs, target: aaunet_multilevel_loss(outputs, target, weights)  # noqa: E731
        result = train(model, ctx.data.train_set, cfg.train, seed=ctx.recipe.seed, log=_train_log(ctx),
                       desc="teacher", task=task, criterion=criterion, **_resumable(ctx, folder))
        extra["final_loss"] = result.final_loss
    return _finish_model_stage(ctx, folder, "teacher", model, spec, extra, task)


def make_distiller(ctx: RunContext) -> Distiller | None:
    """The student stage's distillation terms from the recipe, or None without a teacher or any term."""
    cfg = ctx.recipe.student.distill
    if "teacher" not in ctx.outcomes or not cfg.active:
        return None
    from distill.adapters import FeaturePair
    from distill.teacher_cache import TeacherCache

    teacher, _ = load_model(ctx.output("teacher", "model"))
    features = cfg.features
    pairs: list[FeaturePair] | None = []
    if features is not None and features.weight > 0:
        pairs = [FeaturePair(p.student, p.teacher, p.loss, p.weight) for p in features.pairs] if features.pairs else None
    teacher_input = ctx.recipe.teacher_input
    cache = None
    if cfg.cache:
        tags = (teacher_input, "output" if cfg.output_kd > 0 else "", *sorted(p.teacher for p in pairs or ()))
        cache = TeacherCache(ctx.workdir / "teacher_cache", teacher, tags=tags)
    return Distiller(teacher, output_weight=cfg.output_kd, output_loss=cfg.loss, pairs=pairs,
                     feature_weight=features.weight if features else 0.0,
                     feature_loss=features.loss if features else "mse",
                     auto_last=features.last if features else None, teacher_input=teacher_input, cache=cache)


def student_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], dict[str, str]]:
    cfg = ctx.recipe.student
    spec = ModelSpec(family="student", name=cfg.model, config=cfg.config)
    model = build_model(spec)
    kd = make_distiller(ctx)
    try:
        result = train(model, ctx.data.train_set, cfg.train, seed=ctx.recipe.seed + 1, kd=kd,
                       log=_train_log(ctx), desc="student", **_resumable(ctx, folder))
    except (TapError, AdapterError) as exc:
        raise StageError(f"student: distillation: {exc}") from None
    extra = {"final_loss": result.final_loss}
    if kd is not None:
        extra["kd_adapter_params"] = float(sum(p.numel() for p in kd.parameters()))
        if kd.pairs:
            ctx.tracker.log_params({"kd_pairs": ", ".join(f"{p.student}->{p.teacher}" for p in kd.pairs)})
        if kd.cache is not None:
            extra.update(teacher_cache_hits=float(kd.cache.hits), teacher_cache_misses=float(kd.cache.misses))
    return _finish_model_stage(ctx, folder, "student", model, spec, extra)


def _taylor_grad_fn(ctx: RunContext, spec: TrainSpec, batches: int = 4) -> Callable[[nn.Module], None]:
    """Gradients of the fine-tune loss on a few training batches, for first-order Taylor importance."""
    from distill.trainer import training_batches

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
    from compress.sensitivity import derive_layer_weights, layer_sensitivity, plot_sensitivity, sensitivity_markdown

    assert cfg.sensitivity is not None
    spec = cfg.sensitivity
    score = lambda m: _quality(ctx, m)["psnr"]  # noqa: E731
    rows = layer_sensitivity(model, example, score, spec.ratio, cfg.target)
    (folder / "sensitivity.json").write_text(json.dumps(rows, indent=2))
    (folder / "sensitivity.md").write_text(sensitivity_markdown(rows))
    plot = plot_sensitivity(rows, folder / "sensitivity.png", spec.ratio)
    for path in (folder / "sensitivity.json", folder / "sensitivity.md", plot):
        ctx.tracker.log_artifact(path, artifact_path="sensitivity")
    ctx.tracker.log_metrics({"sensitivity_max_drop_db": max(float(r["drop_db"]) for r in rows),
                             "sensitivity_layers": float(len(rows))})
    return derive_layer_weights(rows) if spec.derive_ratios else {}


def prune_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Prune to the target in ``steps`` rounds, each followed by a KD fine-tune from the unpruned model;
    optionally a sensitivity analysis first (which can set per-layer ratios)."""
    from compress.prune import PruneError, round_targets

    cfg = ctx.recipe.prune
    assert cfg is not None
    model, spec = load_model(ctx.model_dir())
    dense = copy.deepcopy(model)
    shape = _input_shape(ctx.recipe)
    example = torch.zeros(shape)
    before = {"params_before": count_params(model), "macs_before": count_macs(model, shape),
              "psnr_before": _quality(ctx, model)["psnr"]}
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
        pruned = _quality(ctx, model)["psnr"]
        kd = Distiller(dense, output_weight=cfg.kd_weight) if cfg.kd_weight > 0 else None
        train(model, ctx.data.train_set, finetune, seed=ctx.recipe.seed + 2 + i, kd=kd,
              log=_train_log(ctx, f"round{i}_" if cfg.steps > 1 else ""), desc=f"prune round {i} fine-tune",
              **_resumable(ctx, folder, f"checkpoint-round{i}"))
        tuned = _quality(ctx, model)["psnr"]
        extra.update({f"round{i}_psnr_pruned": pruned, f"round{i}_psnr": tuned,
                      f"round{i}_macs": float(count_macs(model, shape))})
        ctx.tracker.log_metrics({k: v for k, v in extra.items() if k.startswith(f"round{i}_")})
    extra["psnr_before_finetune"] = extra[f"round{cfg.steps}_psnr_pruned"]
    spec = spec.model_copy(update={"widths": widths, "widths_after_fold": spec.folded})
    metrics, outputs = _finish_model_stage(ctx, folder, "prune", model, spec, extra)
    metrics["macs_reduction"] = 1.0 - metrics["macs"] / max(before["macs_before"], 1)
    metrics["params_reduction"] = 1.0 - metrics["params"] / max(before["params_before"], 1)
    metrics["psnr_drop_db"] = before["psnr_before"] - metrics["psnr"]
    ctx.tracker.log_metrics({k: metrics[k] for k in ("macs_reduction", "params_reduction", "psnr_drop_db")})
    (folder / "channel_plan.json").write_text(json.dumps(widths, indent=2))
    ctx.tracker.log_artifact(folder / "channel_plan.json")
    return metrics, outputs


def fold_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], dict[str, str]]:
    model, spec = load_model(ctx.model_dir())
    folded, counts = fold_model(model)
    probe = _full_image_tensors(ctx)[0][0].unsqueeze(0)  # a size every model in the zoo accepts
    with torch.no_grad():
        max_diff = float((model(probe) - folded(probe)).abs().max())
    if max_diff > 1e-4:
        raise StageError(f"fold: folded model differs from the unfolded one by {max_diff:.2e} (limit 1e-4)")
    spec = spec.model_copy(update={"folded": True})
    extra = {**{k: float(v) for k, v in counts.items()}, "fold_max_abs_diff": max_diff}
    return _finish_model_stage(ctx, folder, "fold", folded, spec, extra)


def calibration_frames(ctx: RunContext, count: int, selection: str = "random") -> np.ndarray:
    """``count`` RAW crops of the export input size from the *training* data (NCHW float32), picked as
    ``quantize.calibration_selection`` says (``compress.calibration``: random, or spread over brightness)."""
    from compress.calibration import calibration_crops

    try:
        return calibration_crops([p.raw for p in ctx.data.train_pairs], count, ctx.recipe.export.input_size,
                                 selection, seed=ctx.recipe.seed)  # type: ignore[arg-type]
    except ValueError as exc:
        raise StageError(f"quantize: {exc}") from None


@torch.no_grad()
def activation_ranges(model: nn.Module, frames: np.ndarray) -> dict[str, dict[str, float]]:
    """Min / max / 99.99th-percentile |x| of every leaf module's output on the calibration frames.

    INT8 uses one scale per activation tensor: a layer whose max is far above its 99.99th percentile
    loses resolution to outliers, which is the first thing to look at when INT8 quality drops.
    """
    stats: dict[str, dict[str, float]] = {}

    def hook(name: str):
        def record(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            s = stats.setdefault(name, {"min": float("inf"), "max": float("-inf"), "p9999_abs": 0.0})
            s["min"] = min(s["min"], float(out.min()))
            s["max"] = max(s["max"], float(out.max()))
            s["p9999_abs"] = max(s["p9999_abs"], float(torch.quantile(out.abs().flatten()[:1_000_000], 0.9999)))

        return record

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())
              and not isinstance(m, nn.Identity)]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        model.eval()
        model(torch.from_numpy(frames))
    finally:
        for h in handles:
            h.remove()
    return stats


def quantize_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Calibration frames and activation statistics; with ``quantize.qat`` also the quantization-aware
    fine-tune, whose float model (folded first, as the export ships it) is what the export converts."""
    cfg = ctx.recipe.quantize
    model, spec = load_model(ctx.model_dir())
    frames = calibration_frames(ctx, cfg.calibration_frames, cfg.calibration_selection)
    np.save(folder / "calibration.npy", frames)
    model_dir, qat_metrics = ctx.model_dir(), {}
    if cfg.qat is not None:
        model, spec, model_dir, qat_metrics = _qat(ctx, folder, model, spec, frames)
    ranges = activation_ranges(model, frames)
    (folder / "activation_ranges.json").write_text(json.dumps(ranges, indent=2))
    ctx.tracker.log_artifact(folder / "activation_ranges.json")
    outlier_ratio = max((s["max"] - s["min"]) / max(2 * s["p9999_abs"], 1e-12) for s in ranges.values())
    metrics = {
        **_quality(ctx, model),
        "params": count_params(model),
        "macs": count_macs(model, _input_shape(ctx.recipe)),
        "size_kb": size_kb(model_dir / "model.pt"),
        "calibration_frames": float(len(frames)),
        "calibration_raw_mean": float(frames.mean()),
        "activation_outlier_ratio_max": float(outlier_ratio),
        **qat_metrics,
    }
    ctx.tracker.log_params({"quant_mode": cfg.mode, "quant_int8_io": cfg.int8_io,
                            "quant_variants": ",".join(cfg.built_variants()),
                            "quant_calibration_selection": cfg.calibration_selection,
                            "quant_qat": cfg.qat is not None})
    ctx.tracker.log_metrics(metrics)
    return metrics, {"calibration": str(folder / "calibration.npy"), "model": str(model_dir)}


def _qat(ctx: RunContext, folder: Path, model: nn.Module, spec: ModelSpec, frames: np.ndarray,
         ) -> tuple[nn.Module, ModelSpec, Path, dict[str, float]]:
    """``compress.qat.qat_finetune`` on the folded student; saves the fine-tuned float model in the stage."""
    from compress.qat import qat_finetune

    qat = ctx.recipe.quantize.qat
    assert qat is not None
    if not spec.folded:  # fake quantization must see the single convs TFLite will quantize
        model, _ = fold_model(model)
        spec = spec.model_copy(update={"folded": True})
    before = _quality(ctx, model)["psnr"]
    result = qat_finetune(model, ctx.data.train_set, qat.train, calibration=torch.from_numpy(frames),
                          kd_weight=qat.kd_weight, freeze_fraction=qat.freeze_fraction, seed=ctx.recipe.seed + 5,
                          log=_train_log(ctx), **_resumable(ctx, folder, "checkpoint-qat"))
    model_dir = save_model(result.model, spec, folder / "model")
    ctx.tracker.log_artifact(model_dir, artifact_path="checkpoint")
    metrics = {"qat_psnr_before": before, "qat_final_loss": result.final_loss,
               "qat_fake_quant_psnr_start": float(result.fake_quant_psnr_start or 0.0),
               "qat_fake_quant_psnr_end": float(result.fake_quant_psnr_end or 0.0)}
    return result.model, spec, model_dir, metrics


def eval_crops(ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """Centre crops of every held-out image at the export input size: (raw NCHW, rgb NCHW)."""
    h, w = ctx.recipe.export.input_size
    raws, rgbs = [], []
    for pair in ctx.data.eval_pairs:
        _, ph, pw = pair.raw.shape
        if ph < h or pw < w:
            raise StageError(f"export: held-out image {pair.name} ({ph}x{pw} packed) is smaller than the "
                             f"export input size {h}x{w}")
        y, x = (ph - h) // 2, (pw - w) // 2
        raws.append(pair.raw[:, y : y + h, x : x + w])
        rgbs.append(pair.rgb[:, 2 * y : 2 * (y + h), 2 * x : 2 * (x + w)])
    return np.stack(raws).astype(np.float32), np.stack(rgbs).astype(np.float32)


def export_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], dict[str, str]]:
    """ONNX + every TFLite variant from one onnx2tf run, each scored and gated (``recipes.quant_gate``).

    fp32 is always built (the reference for every PSNR drop); ``quantize.mode`` is the variant the
    bundle ships and ``quantize.variants`` are built alongside.  With ``quantize.selective`` the int8
    variant comes from the selective-precision search (``compress.selective``).
    """
    from compress.latency import onnx_latency_ms, tflite_latency_ms
    from compress.onnx_export import export_onnx
    from compress.parity import psnr_db, run_onnx
    from compress.selective import SelectivePrecision, selective_markdown
    from compress.tflite import assert_builtin_only, convert_onnx_to_tflite, tflite_io_details
    from distill.metrics import psnr, ssim
    from recipes.quant_gate import gate_failures, score_tflite, tflite_psnr

    cfg, qcfg = ctx.recipe.export, ctx.recipe.quantize
    threads = cfg.latency_threads
    variants = qcfg.built_variants()
    model, spec = load_model(ctx.model_dir())
    if not spec.folded:  # fold: disabled still ships single convs: folding is exact, branches only cost time
        model, _ = fold_model(model)
    raws, rgbs = eval_crops(ctx)
    target = torch.from_numpy(rgbs)
    with torch.no_grad():
        reference = model(torch.from_numpy(raws)).numpy()
    bar = tqdm(total=3 + len(variants), desc="export", leave=False, dynamic_ncols=True)
    bar.set_postfix_str("ONNX")
    onnx_path = export_onnx(model, folder / "model.onnx", _input_shape(ctx.recipe))
    bar.update()
    bar.set_postfix_str(f"onnx2tf -> TFLite {' + '.join(variants)}")
    calibration = np.load(ctx.output("quantize", "calibration"))
    selective = None
    modes = [v for v in variants if v != "fp32"]
    if qcfg.selective is not None:
        drop = lambda cand, fp32: (tflite_psnr(fp32, raws, target, threads)  # noqa: E731
                                   - tflite_psnr(cand, raws, target, threads))
        selective = SelectivePrecision(qcfg.selective.max_drop_db, qcfg.selective.max_float_layers, drop,
                                       probe=qcfg.selective.probe)
        modes.remove("int8")
    int8_source, rewrites = _xnnpack_int8_source(onnx_path, folder) if qcfg.xnnpack_rewrite else (onnx_path, {})
    separate_int8 = "int8" in variants and int8_source != onnx_path
    tflite = convert_onnx_to_tflite(onnx_path, folder / "tflite", calibration, int8_io=qcfg.int8_io,
                                    modes=[m for m in modes if not (separate_int8 and m == "int8")],
                                    extra=None if separate_int8 else selective)
    if separate_int8:  # a second onnx2tf run on the rewritten graph, for the int8 variant alone
        bar.set_postfix_str(f"onnx2tf -> TFLite int8 (XNNPACK rewrite: {rewrites})")
        built = convert_onnx_to_tflite(int8_source, folder / "tflite", calibration, int8_io=qcfg.int8_io,
                                       modes=[] if selective else ["int8"], extra=selective)
        built.pop("fp32").unlink()
        tflite["int8"] = built["int8"]
    paths: dict[str, Path] = {"onnx": onnx_path, **{f"tflite_{v}": tflite[v] for v in variants}}
    for v in variants:
        assert_builtin_only(tflite[v])
    bar.update()

    metrics: dict[str, float] = {}
    bar.set_postfix_str("parity + latency onnx")
    out = run_onnx(onnx_path, raws)
    pred = torch.from_numpy(np.clip(out, 0, 1))
    metrics.update(parity_psnr_db_onnx=psnr_db(out, reference), psnr_onnx=psnr(pred, target),
                   ssim_onnx=ssim(pred, target), size_kb_onnx=size_kb(onnx_path))
    metrics[f"latency_ms_onnx_{threads}t"] = onnx_latency_ms(onnx_path, num_threads=threads)["median_ms"]
    bar.update()
    for v in variants:
        bar.set_postfix_str(f"parity + latency tflite_{v}")
        fmt = f"tflite_{v}"
        metrics.update(score_tflite(tflite[v], fmt, raws, reference, target, threads))
        thread_counts = sorted({threads, 1, 2}) if v == qcfg.mode else [threads]
        for n in thread_counts:
            metrics[f"latency_ms_{fmt}_{n}t"] = tflite_latency_ms(tflite[v], num_threads=n)["median_ms"]
        bar.update()
    for v in variants:
        if v != "fp32":
            metrics[f"psnr_drop_db_tflite_{v}"] = metrics["psnr_tflite_fp32"] - metrics[f"psnr_tflite_{v}"]
    metrics.update({f"xnnpack_rewrites_{op.lower()}": float(n) for op, n in rewrites.items()})
    metrics["psnr_pytorch"] = psnr(torch.from_numpy(np.clip(reference, 0, 1)), target)
    if qcfg.x86:
        bar.set_postfix_str(f"x86: {', '.join(qcfg.x86)}")
        x86_metrics, x86_paths = _x86_variants(ctx, model, onnx_path, folder, calibration, raws, reference, target,
                                               metrics)
        metrics.update(x86_metrics)
        paths.update(x86_paths)
    bar.close()
    shipped = f"tflite_{qcfg.mode}"
    metrics["params"] = count_params(model)
    metrics["macs"] = count_macs(model, _input_shape(ctx.recipe))
    metrics["size_kb"] = metrics[f"size_kb_{shipped}"]
    metrics["psnr"], metrics["ssim"] = metrics[f"psnr_{shipped}"], metrics[f"ssim_{shipped}"]
    outputs = {k: str(v) for k, v in paths.items()}
    if selective is not None:
        assert selective.result is not None
        result = selective.result
        (folder / "selective.json").write_text(json.dumps(result.to_json(), indent=2))
        (folder / "selective.md").write_text(selective_markdown(result))
        for name in ("selective.json", "selective.md"):
            ctx.tracker.log_artifact(folder / name, artifact_path="selective")
        metrics.update(selective_float_layers=float(len(result.float_layers)),
                       selective_int8_drop_db_before=result.int8_drop_db)
        outputs["selective"] = str(folder / "selective.json")
    ctx.tracker.log_metrics(metrics)

    for fmt in ("onnx", "tflite_fp32"):
        if metrics[f"parity_psnr_db_{fmt}"] < cfg.parity_min_db:
            raise StageError(f"export: {fmt} parity {metrics[f'parity_psnr_db_{fmt}']:.1f} dB is below the "
                             f"{cfg.parity_min_db:.0f} dB gate; no bundle is written")
    if selective is not None and selective.result is not None and not selective.result.reached:
        r = selective.result
        raise StageError(f"export: selective precision: int8 PSNR drop {r.drop_db:.3f} dB with "
                         f"{len(r.float_layers)} float layer(s) still exceeds quantize.selective.max_drop_db "
                         f"{r.max_drop_db:g} dB (limit quantize.selective.max_float_layers "
                         f"{qcfg.selective.max_float_layers}); no bundle is written")  # type: ignore[union-attr]
    failures = gate_failures(metrics, qcfg, cfg.parity_min_db)
    if failures:
        raise StageError(f"export: {'; '.join(failures)}; no bundle is written")
    io = {f"tflite_{v}": tflite_io_details(tflite[v]) for v in variants}
    (folder / "io_details.json").write_text(json.dumps(io, indent=2))
    for path in (*paths.values(), folder / "io_details.json"):
        ctx.tracker.log_artifact(Path(path), artifact_path="exported")
    outputs.update(io_details=str(folder / "io_details.json"), tflite_shipped=str(tflite[qcfg.mode]),
                   shipped_variant=qcfg.mode)
    return metrics, outputs


def _xnnpack_int8_source(onnx_path: Path, folder: Path) -> tuple[Path, dict[str, int]]:
    """The ONNX file the int8 variant converts from: a copy with the ops XNNPACK leaves out of INT8
    rewritten exactly (``compress.graph_rewrites``), or ``onnx_path`` itself when nothing needs it
    (then one onnx2tf run builds every variant).  fp32 and the other variants keep the original graph:
    the rewrite costs them 10-20 % in float."""
    import shutil

    from compress.graph_rewrites import rewrite_for_xnnpack_int8

    copy_path = folder / f"{onnx_path.stem}_xnnpack_int8.onnx"
    shutil.copyfile(onnx_path, copy_path)
    counts = rewrite_for_xnnpack_int8(copy_path)
    if not counts:
        copy_path.unlink()
        return onnx_path, {}
    return copy_path, counts


def _x86_variants(ctx: RunContext, model: nn.Module, onnx_path: Path, folder: Path, calibration: np.ndarray,
                  raws: np.ndarray, reference: np.ndarray, target: torch.Tensor,
                  float_metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, Path]]:
    """``quantize.x86``: ONNX Runtime QDQ models (an exported format) and Neural Compressor's PT2E INT8
    of the PyTorch model, scored like the TFLite variants; the drop is against the float model of the
    same runtime (fp32 ONNX, PyTorch) and latency at ``export.latency_threads``."""
    from compress.latency import onnx_latency_ms, torch_latency_ms
    from compress.onnx_quant import quantize_onnx
    from compress.parity import run_onnx
    from recipes.quant_gate import score_outputs

    qcfg, threads = ctx.recipe.quantize, ctx.recipe.export.latency_threads
    metrics: dict[str, float] = {}
    paths: dict[str, Path] = {}
    for variant in qcfg.x86:
        if variant in ("onnx_int8", "onnx_int16"):
            path = quantize_onnx(onnx_path, folder / f"{onnx_path.stem}_{variant}.onnx", calibration,
                                 mode=variant.removeprefix("onnx_"))  # type: ignore[arg-type]
            metrics.update(score_outputs(run_onnx(path, raws), variant, reference, target))
            metrics[f"size_kb_{variant}"] = size_kb(path)
            metrics[f"latency_ms_{variant}_{threads}t"] = onnx_latency_ms(path, num_threads=threads)["median_ms"]
            metrics[f"psnr_drop_db_{variant}"] = float_metrics["psnr_onnx"] - metrics[f"psnr_{variant}"]
            paths[variant] = path
        else:
            from compress.inc_quant import inc_autotune

            pairs = list(zip(torch.from_numpy(raws), target))
            result = inc_autotune(model, torch.from_numpy(calibration), pairs,
                                  max_drop_db=qcfg.gate.drop_budget(variant), max_trials=qcfg.inc_max_trials)
            with torch.no_grad():
                out = result.model(torch.from_numpy(raws)).numpy()
            metrics.update(score_outputs(out, variant, reference, target))
            metrics[f"psnr_drop_db_{variant}"] = float_metrics["psnr_pytorch"] - metrics[f"psnr_{variant}"]
            metrics["inc_trials"] = float(len(result.trials))
            shape = _input_shape(ctx.recipe)
            metrics[f"latency_ms_{variant}_{threads}t"] = torch_latency_ms(result.model, shape, threads)["median_ms"]
            metrics[f"latency_ms_pytorch_{threads}t"] = torch_latency_ms(model, shape, threads)["median_ms"]
            config = folder / "inc_int8_config.json"
            config.write_text(json.dumps({"config": result.config, "trials": result.trials}, indent=2, default=str))
            ctx.tracker.log_params({"inc_int8_" + k: v for k, v in result.config.items()})
            ctx.tracker.log_artifact(config, artifact_path="x86")
    return metrics, paths


def handoff_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], dict[str, str]]:
    from compress.handoff import golden_tolerance, write_bundle
    from compress.parity import run_tflite
    from distill.data.bayer import PACKED_ORDER, colour_offsets
    from recipes import model_card

    recipe = ctx.recipe
    export = ctx.outcomes["export"]
    em = export.metrics
    variant = export.outputs.get("shipped_variant", "int8")
    fmt = f"tflite_{variant}"
    model_path = ctx.output("export", fmt)
    io = json.loads(ctx.output("export", "io_details").read_text())[fmt]
    raws, _ = eval_crops(ctx)
    golden_in_nchw = raws[:1]
    golden_out = np.transpose(run_tflite(model_path, golden_in_nchw), (0, 2, 3, 1))
    golden_in = np.transpose(golden_in_nchw, (0, 2, 3, 1))
    model, spec = load_model(ctx.model_dir())
    offsets = colour_offsets(recipe.data.pattern)
    inp, out = io["inputs"][0], io["outputs"][0]
    threads = recipe.export.latency_threads
    layers = model_card.float_layers(export.outputs, variant)
    built = [v for v in recipe.quantize.built_variants() if f"tflite_{v}" in export.outputs]
    card = {
        "name": recipe.bundle_name,
        "description": recipe.description or f"{spec.name} from recipe {recipe.name}",
        "format": "tflite",
        "variant": variant,
        "quantization": model_card.describe_variant(variant, recipe.quantize.int8_io, layers),
        "precision": model_card.precision_section(variant, recipe.quantize.int8_io, layers),
        "input_size": model_card.input_size_section(model.eval(), recipe.export.input_size),
        "calibration": model_card.calibration_section(
            recipe, int(ctx.outcomes["quantize"].metrics.get("calibration_frames", recipe.quantize.calibration_frames))),
        "model": {"family": spec.family, "name": spec.name, "config": spec.config, "widths": spec.widths,
                  "folded": True},  # the export stage folds whatever the fold stage did not
        "input": {
            "name": inp["name"], "shape": inp["shape"], "dtype": inp["dtype"], "layout": "NHWC",
            "scale": inp.get("scale"), "zero_point": inp.get("zero_point"),
            "channel_order": list(PACKED_ORDER), "bayer_pattern": recipe.data.pattern,
            "packing": {c: f"{dy}::2, {dx}::2" for c, (dy, dx) in offsets.items()},
            "normalisation": _normalisation_text(recipe),
            "range": [0.0, 1.0],
        },
        "output": {"name": out["name"], "shape": out["shape"], "dtype": out["dtype"], "layout": "NHWC",
                   "scale": out.get("scale"), "zero_point": out.get("zero_point"), "colour": "sRGB",
                   "range": [0.0, 1.0]},
        "quality": model_card.quality_table(em, built, threads),
        "evaluation": f"{len(ctx.data.eval_pairs)} held-out images ({recipe.data.kind} data), centre crops "
                      f"of {recipe.export.input_size[0]}x{recipe.export.input_size[1]} packed pixels",
        "cost": {"size_kb": em[f"size_kb_{fmt}"], "params": int(em["params"]), "macs": int(em["macs"]),
                 "latency_ms": em[f"latency_ms_{fmt}_{threads}t"], "latency_threads": threads,
                 "latency_ms_by_threads": model_card.shipped_latency(em, variant)},
        "golden": {"input": "golden_input.npy", "output": "golden_output.npy",
                   "tolerance": golden_tolerance(out)},
        "provenance": {
            "recipe": recipe.name, "recipe_file": str(ctx.recipe_path), "recipe_hash": recipe_hash(recipe),
            "git_sha": git_sha(), "mlflow_tracking_uri": ctx.tracker.tracking_uri,
            "mlflow_run_id": ctx.tracker.parent_run_id, "export_run_id": export.run_id,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    bundle = write_bundle(ctx.workdir / "handoff" / recipe.bundle_name, model_path, card, golden_in, golden_out)
    ctx.tracker.log_artifact(bundle, artifact_path="handoff")
    metrics = {"psnr": em[f"psnr_{fmt}"], "ssim": em[f"ssim_{fmt}"], "params": em["params"],
               "macs": em["macs"], "size_kb": em[f"size_kb_{fmt}"]}
    ctx.tracker.log_metrics(metrics)
    return metrics, {"bundle": str(bundle)}


def _normalisation_text(recipe: Recipe) -> str:
    data = recipe.data
    if data.kind in ("zurich", "mai21"):
        return "raw / 1020 (10-bit sensor data, PyNET/MAI convention), clipped to [0, 1]"
    if data.kind == "paired":
        return f"(raw - {data.black_level:g}) / ({data.white_level:g} - {data.black_level:g}), clipped to [0, 1]"
    return "(raw - black) / (white - black), clipped to [0, 1] (embedded data is synthesised already normalised)"


STAGES = {
    "teacher": teacher_stage,
    "student": student_stage,
    "prune": prune_stage,
    "fold": fold_stage,
    "quantize": quantize_stage,
    "export": export_stage,
    "handoff": handoff_stage,
}

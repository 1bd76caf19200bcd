"""Student stage: train the student on its losses plus the recipe's distillation terms."""
from __future__ import annotations

from pathlib import Path

from compress.checkpoint import ModelSpec, build_model, load_model
from distill.adapters import AdapterError, FeaturePair
from distill.data.unpaired import UnpairedRaw, embedded_sensor
from distill.distiller import Distiller
from distill.once_for_all import OnceForAll, OnceForAllError
from distill.taps import TapError
from distill.teacher_cache import TeacherCache
from distill.trainer import train
from recipes.context import RunContext, StageError
from recipes.results import ModelResult
from recipes.stages.common import finish_model_stage, resumable, train_log


def make_distiller(ctx: RunContext) -> Distiller | None:
    """The student stage's distillation terms from the recipe, or None without a teacher or any term."""
    cfg = ctx.recipe.student.distill
    if "teacher" not in ctx.outcomes or not cfg.active:
        return None
    teacher, _ = load_model(ctx.result("teacher", ModelResult).model)
    features = cfg.features
    pairs: list[FeaturePair] | None = []
    if features is not None and features.weight > 0:
        pairs = ([FeaturePair(p.student, p.teacher, p.loss, p.weight) for p in features.pairs]
                 if features.pairs else None)
    teacher_input = ctx.recipe.teacher_input
    cache = None
    if cfg.cache:
        tags = (teacher_input, "output" if cfg.output_kd > 0 else "", *sorted(p.teacher for p in pairs or ()))
        cache = TeacherCache(ctx.workdir / "teacher_cache", teacher, tags=tags)
    unpaired = unpaired_source(ctx) if cfg.unpaired_raw > 0 else None
    return Distiller(teacher, output_weight=cfg.output_kd, output_loss=cfg.loss, pairs=pairs,
                     feature_weight=features.weight if features else 0.0,
                     feature_loss=features.loss if features else "mse",
                     auto_last=features.last if features else None, teacher_input=teacher_input, cache=cache,
                     unpaired=unpaired, unpaired_weight=cfg.unpaired_raw,
                     unpaired_batch=cfg.unpaired_batch or ctx.recipe.student.train.batch_size)


def unpaired_source(ctx: RunContext) -> UnpairedRaw:
    """Unpaired RAW of the training photos (embedded data: their one sensor; other data: a camera per patch)."""
    data = ctx.recipe.data
    sensor = embedded_sensor(ctx.recipe.seed) if data.kind == "embedded" else None
    return UnpairedRaw(ctx.data.train_pairs, data.patch_size, seed=ctx.recipe.seed, pattern=data.pattern,
                       sensor=sensor)


def make_once_for_all(ctx: RunContext) -> OnceForAll | None:
    """The recipe's once-for-all super-net head (``student.distill.once_for_all``), or None when it is off."""
    distill = ctx.recipe.student.distill
    cfg, tap = distill.once_for_all, ctx.recipe.once_for_all_tap
    if cfg is None or tap is None:  # the schema refuses once_for_all without a trunk tap
        return None
    return OnceForAll(tap, threshold_db=cfg.threshold_db, head_width=cfg.head_width, blocks=cfg.blocks,
                      weight=cfg.weight, seed=ctx.recipe.seed + 1, distill=cfg.distill,
                      unpaired=unpaired_source(ctx) if cfg.unpaired_raw else None,
                      unpaired_batch=distill.unpaired_batch or ctx.recipe.student.train.batch_size)


def student_stage(ctx: RunContext, folder: Path) -> tuple[dict[str, float], ModelResult]:
    cfg = ctx.recipe.student
    spec = ModelSpec(family="student", name=cfg.model, config=cfg.config)
    model = build_model(spec)
    kd, ofa = make_distiller(ctx), make_once_for_all(ctx)
    try:
        result = train(model, ctx.data.train_set, cfg.train, seed=ctx.recipe.seed + 1, kd=kd,
                       log=train_log(ctx), desc="student", ofa=ofa, **resumable(ctx, folder))
    except (TapError, AdapterError) as exc:
        raise StageError(f"student: distillation: {exc}") from None
    except OnceForAllError as exc:
        raise StageError(f"student: student.distill.once_for_all: {exc}") from None
    extra = {"final_loss": result.final_loss}
    if ofa is not None:
        extra.update(ofa.summary())
    if kd is not None:
        extra["kd_adapter_params"] = float(sum(p.numel() for p in kd.parameters()))
        if kd.pairs:
            ctx.tracker.log_params({"kd_pairs": ", ".join(f"{p.student}->{p.teacher}" for p in kd.pairs)})
        if kd.cache is not None:
            extra.update(teacher_cache_hits=float(kd.cache.hits), teacher_cache_misses=float(kd.cache.misses))
    return finish_model_stage(ctx, folder, "student", model, spec, extra)

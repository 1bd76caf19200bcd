"""One training loop for teachers, students and fine-tunes: step-based, seeded, logged per step.

Students add distillation terms from a frozen teacher (``distill.distiller.Distiller``: output KD,
feature KD through adapters, heterogeneous clean-image KD); every term is logged on its own.  The
batches come from ``distill.batches``; what a model maps to what (``Task``) and how it is scored
(``evaluate``) live in ``distill.evaluation``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill import distributed
from distill.batches import training_batches
from distill.checkpointing import (
    CheckpointError,
    capture_rng_states,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from distill.distiller import Distiller
from distill.evaluation import DEFAULT_TASK, Task
from distill.losses import KNOWN_LOSSES, LossFn, WeightedLoss
from distill.once_for_all import OnceForAll
from distill.perceptual import PerceptualLoss
from distill.progress import tqdm

if TYPE_CHECKING:
    from distill.data.datasets import PairedPatchDataset

LogFn = Callable[[dict[str, float], int], None]


class PerceptualSpec(BaseModel):
    """A VGG-19 feature loss; the weights are a local torchvision state_dict (never downloaded)."""

    model_config = ConfigDict(extra="forbid")

    weights: Path
    layer: str = "relu5_4"

    @field_validator("weights")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"perceptual loss weights file {str(value)!r} not found (nothing is downloaded)")
        return value


class TrainSpec(BaseModel):
    """How long and how to train; a recipe's ``train:`` block."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, ge=0, description="optimiser steps")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="clip the gradients' global L2 norm to this before each "
                                    "step (logs train_grad_norm); stops a loss spike from saturating a sigmoid output")
    losses: dict[str, float] = Field(default_factory=lambda: {"l1": 1.0})
    perceptual: PerceptualSpec | None = Field(None, description="settings of the 'perceptual' loss term")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1, description="steps between resumable checkpoints (and one at the end)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="autocast dtype; fp16 adds a GradScaler")
    channels_last: bool = Field(False, description="NHWC memory format for model and batches (tensor cores)")
    compile: bool = Field(False, description="torch.compile the model's forward")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    pin_memory: bool = Field(True, description="page-locked batches for faster host->GPU copies (CUDA only)")

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in KNOWN_LOSSES:
                raise ValueError(f"unknown loss {name!r}; known: {', '.join(KNOWN_LOSSES)}")
        if not value:
            raise ValueError("needs at least one loss term")
        return value

    @model_validator(mode="after")
    def _perceptual_configured(self) -> TrainSpec:
        if "perceptual" in self.losses and self.perceptual is None:
            raise ValueError("loss 'perceptual' needs perceptual.weights: a local VGG-19 state_dict file")
        return self

    def criterion(self) -> WeightedLoss:
        configured: dict[str, LossFn] = {}
        if self.perceptual is not None and "perceptual" in self.losses:
            configured["perceptual"] = PerceptualLoss(self.perceptual.weights, self.perceptual.layer)
        return WeightedLoss(self.losses, configured)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available; asking for CUDA without one is an error, not a silent CPU run."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.info().enabled:
        return torch.device("cuda", distributed.info().local_rank)
    return torch.device(name)


def _to_float(value: Any) -> Any:
    """Autocast outputs (a tensor, or a list/tuple/dict of them) back to float32 for the loss."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    return value


class _TrainStep(nn.Module):
    """One step's forward and loss as a module, so DistributedDataParallel syncs the gradients of the
    model *and* the KD adapters.  The model runs under autocast; the recipe's loss runs in float32."""

    _kd: Distiller | None  # these six are kept in __dict__, out of the module tree
    _ofa: OnceForAll | None
    _task: Task
    _criterion: Callable
    _autocast: Callable[[], Any]
    _compiled: Callable | None

    def __init__(self, model: nn.Module, kd: Distiller | None, task: Task, criterion: Callable,
                 autocast: Callable[[], Any], compiled: Callable | None = None, ofa: OnceForAll | None = None) -> None:
        super().__init__()
        self.model = model
        self.adapters = kd.adapters if kd else nn.ModuleDict()
        if ofa is not None:
            self.ofa_head = ofa.head  # so DDP syncs its gradients too
        self.__dict__["_kd"], self.__dict__["_task"], self.__dict__["_criterion"] = kd, task, criterion
        self.__dict__["_ofa"] = ofa
        self.__dict__["_autocast"], self.__dict__["_compiled"] = autocast, compiled

    def forward(self, x: torch.Tensor, target: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        kd, task, ofa = self._kd, self._task, self._ofa
        taps = kd.student_taps if kd and kd.student_taps else nullcontext()
        trunk = ofa.tapping() if ofa else nullcontext()
        with self._autocast():
            with taps, trunk:
                if self._compiled is not None and not task.multilevel:
                    pred = self._compiled(x, level=task.level) if task.level else self._compiled(x)
                else:
                    pred = task.train_forward(self.model, x)
            kd_out = kd.loss(pred, x, target) if kd else None
            # the unpaired RAW runs outside the taps: its features are no pair's
            unpaired = kd.unpaired_loss(self.model, x, step) if kd and kd.unpaired is not None else None
            super_pred = ofa.super_forward() if ofa else None  # None once the super-net is detached
        loss, parts = self._criterion(_to_float(pred), target)
        if kd_out is not None:
            kd_loss, kd_parts = kd_out
            parts.update(kd_parts)
            loss = loss + kd_loss.float()
        if unpaired is not None:
            parts.update(unpaired[1])
            loss = loss + unpaired[0]
        if ofa is not None and ofa.distill > 0:  # the detached super-network's distillation (zero before)
            with self._autocast():
                distill_loss, distill_parts = ofa.distill_loss(self.model, x, _to_float(pred), target, step)
            parts.update(distill_parts)
            loss = loss + distill_loss.float()
        if ofa is not None and super_pred is not None:
            super_loss, super_parts = ofa.loss(_to_float(super_pred), target, self._criterion, step)
            parts.update(super_parts)
            loss = loss + super_loss
        return loss, parts


def _move_criterion(criterion: Any, device: torch.device) -> None:
    """Loss terms with weights (the perceptual VGG) follow the model to its device."""
    if isinstance(criterion, nn.Module):
        criterion.to(device)
    for fn, _weight in getattr(criterion, "terms", {}).values():
        if isinstance(fn, nn.Module):
            fn.to(device)


def nonfinite_message(desc: str, loss: float, step: int, parts: dict[str, float]) -> str:
    """One line naming the step and the loss term(s) that went NaN/Inf (or the sum, if every term is finite)."""
    bad = [f"{k}={v}" for k, v in parts.items() if not math.isfinite(v)]
    culprit = f"non-finite term(s): {', '.join(bad)}" if bad else "every term is finite; their weighted sum overflowed"
    terms = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
    return f"{desc}: loss became {loss} at step {step}; {culprit} (all terms: {terms})"


def train(
    model: nn.Module,
    dataset: PairedPatchDataset,
    spec: TrainSpec,
    *,
    seed: int = 0,
    kd: Distiller | None = None,
    log: LogFn | None = None,
    desc: str = "train",
    task: Task = DEFAULT_TASK,
    criterion: Callable[[Any, torch.Tensor], tuple[torch.Tensor, dict[str, float]]] | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    ofa: OnceForAll | None = None,
) -> TrainResult:
    """Train ``model`` in place with Adam + cosine decay; logs every ``spec.log_every`` steps.

    ``criterion`` replaces the recipe's weighted loss for models with their own objective (AA-UNet's
    multi-level loss receives the model's raw input and the target instead of one prediction).
    ``kd`` adds its distillation terms; its adapters are prepared on the first batch and trained with
    the model, and are not part of it.  With an unpaired RAW source, step ``s`` also trains on unpaired
    batch ``s`` (a pure function of the step, so resuming draws the same RAW).  ``ofa`` trains a detachable
    super-net head on the model's trunk jointly until its PSNR passes the threshold
    (``distill.once_for_all``); the head is never part of the model and is checkpointed beside it.

    ``checkpoint_path``: a checkpoint is written there every ``spec.checkpoint_every`` steps and at the
    end (with ``checkpoint_extra``, e.g. the MLflow run id); if one exists, training resumes from it
    exactly (weights, optimiser, scheduler, RNG states, data stream position).  Under torchrun the
    step is DistributedDataParallel over the ranks (each takes its slice of the global batch); only
    rank 0 logs and writes checkpoints.  ``on_step(step)`` runs before each step's forward pass (QAT
    freezes its ranges there); a resumed run calls it only for the steps still to do.  The model ends on
    the CPU in eval mode.
    """
    dist_info = distributed.info()
    device = resolve_device(spec.device)
    if spec.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"{desc}: amp 'fp16' needs a CUDA device; use 'bf16' on the CPU")
    per_rank = distributed.per_rank_batch(spec.batch_size, dist_info.world_size)
    if dist_info.enabled and (len(dataset) % spec.batch_size) % dist_info.world_size:
        raise ValueError(f"{desc}: an epoch of {len(dataset)} patches ends in a batch of "
                         f"{len(dataset) % spec.batch_size} that does not split over {dist_info.world_size} "
                         f"processes; make images x patches_per_image a multiple of batch_size")
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(model, dataset, spec, seed=seed, kd=kd, log=log, desc=desc, task=task,
                      criterion=criterion, checkpoint_path=checkpoint_path, checkpoint_extra=checkpoint_extra,
                      device=device, dist_info=dist_info, per_rank=per_rank, on_step=on_step, ofa=ofa)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        model.to("cpu")
        if spec.channels_last:
            # Module.to takes memory_format (see its docstring); torch's typed overloads omit it
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        if kd:
            kd.teacher.to("cpu")
            kd.adapters.to("cpu")
        if ofa:
            ofa.head.to("cpu")
        model.eval()


def _train(model: nn.Module, dataset: Any, spec: TrainSpec, *, seed: int, kd: Distiller | None,
           log: LogFn | None, desc: str, task: Task, criterion: Callable | None, checkpoint_path: Path | None,
           checkpoint_extra: dict[str, Any] | None, device: torch.device, dist_info: distributed.DistInfo,
           per_rank: int, on_step: Callable[[int], None] | None = None, ofa: OnceForAll | None = None,
           ) -> TrainResult:
    torch.manual_seed(seed)
    memory = torch.channels_last if spec.channels_last else torch.contiguous_format
    # Module.to takes memory_format (see its docstring); torch's typed overloads omit it
    model.to(device=device, memory_format=memory)  # type: ignore[call-overload]
    model.train()
    criterion = criterion or spec.criterion()
    _move_criterion(criterion, device)
    if kd:
        kd.teacher.to(device)
    pin = spec.pin_memory and device.type == "cuda"

    def to_device(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raw, rgb = (t.to(device, non_blocking=pin) for t in batch)
        if spec.channels_last:
            raw, rgb = raw.contiguous(memory_format=memory), rgb.contiguous(memory_format=memory)
        return raw, rgb

    stream: dict[str, Any] = dict(rank=dist_info.rank, world_size=dist_info.world_size, num_workers=spec.num_workers,
                                  pin_memory=pin)
    first = to_device(next(training_batches(dataset, spec.batch_size, seed, **{**stream, "num_workers": 0})))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: the model has no trainable parameters (all frozen, e.g. it served as a KD teacher)")
    if kd and kd.unpaired is not None and (task.level or task.clean_image or task.multilevel):
        raise ValueError(f"{desc}: unpaired RAW distillation needs a plain RAW -> full-resolution RGB task")
    if ofa and (task.level or task.multilevel):
        raise ValueError(f"{desc}: once-for-all training needs a task with one full-resolution image out")
    if kd:
        kd.prepare(model, *task.inputs_targets(*first))
        kd.adapters.to(device=device, memory_format=memory)  # type: ignore[call-overload]  # as above
        params += kd.parameters()
    if ofa:
        ofa.prepare(model, task.inputs_targets(*first)[0])
        ofa.head.to(device=device, memory_format=memory)  # type: ignore[call-overload]  # as above
        params += ofa.parameters()
    optimiser = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, spec.steps) / max(spec.steps, 1)))
    )
    scaler = torch.amp.GradScaler(device.type, enabled=spec.amp == "fp16")
    result = TrainResult(steps=spec.steps, final_loss=float("nan"))
    start = 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = load_checkpoint(checkpoint_path)
        if (ofa is not None) != ("once_for_all" in state):
            raise CheckpointError(f"{desc}: checkpoint {checkpoint_path} was written {'without' if ofa else 'with'} "
                                  f"once-for-all training; delete it or run with --no-resume")
        try:
            model.load_state_dict(state["model"])
            if kd and "adapters" in state:
                kd.adapters.load_state_dict(state["adapters"])
            if ofa:
                ofa.load_state_dict(state["once_for_all"])
            optimiser.load_state_dict(state["optimiser"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{desc}: checkpoint {checkpoint_path} does not fit this model: {first_line}; "
                                  f"delete it or run with --no-resume") from None
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng_states"])
        start = min(int(state["step"]), spec.steps)
        result.final_loss = float(state["extra"].get("final_loss", float("nan")))
    use_probe = start == 0  # step 0 trains on the probe batch already in hand

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else nullcontext
    compiled = torch.compile(model) if spec.compile else None
    step_module: nn.Module = _TrainStep(model, kd, task, criterion, autocast, compiled, ofa)
    if dist_info.enabled:
        step_module = DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # PyNET's coarse levels leave the finer layers out of the graph
        )
    main = dist_info.is_main
    batches = training_batches(dataset, spec.batch_size, seed, start_step=start + int(use_probe), **stream)
    bar = tqdm(range(start, spec.steps), desc=desc, leave=False, dynamic_ncols=True, disable=not main)

    def checkpoint(done: int) -> None:
        assert checkpoint_path is not None  # called only when there is one
        save_checkpoint(checkpoint_path, model=model, optimiser=optimiser, scheduler=scheduler, step=done,
                        rng_states=capture_rng_states(), adapters=kd.adapters if kd else None,
                        scaler=scaler if scaler.is_enabled() else None,
                        once_for_all=ofa.state_dict() if ofa else None,
                        extra={**(checkpoint_extra or {}), "final_loss": result.final_loss, "desc": desc})

    for step in bar:
        if on_step is not None:
            on_step(step)
        x, target = task.inputs_targets(*(first if use_probe and step == 0 else to_device(next(batches))))
        loss, parts = step_module(x, target, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(nonfinite_message(desc, float(loss.detach()), step, parts))
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if spec.grad_clip is not None:
            scaler.unscale_(optimiser)  # clip the true gradients, not the fp16-scaled ones
            parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, spec.grad_clip))
        scaler.step(optimiser)
        scaler.update()
        scheduler.step()
        parts["loss"] = float(loss.detach())
        result.final_loss = parts["loss"]
        if step % spec.log_every == 0 or step == spec.steps - 1:
            result.history.append({"step": step, **parts})
            if log and main:
                log({f"train_{k}": v for k, v in parts.items()}, step)
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
        done = step + 1
        if checkpoint_path is not None and main and (done % spec.checkpoint_every == 0 or done == spec.steps):
            checkpoint(done)
    return result

"""Intel Neural Compressor (3.x) PT2E static INT8 of the PyTorch model: the x86 path.

``neural_compressor.torch``'s ``export`` -> ``prepare`` -> calibrate -> ``convert`` runs torchao's
``X86InductorQuantizer`` underneath (uint8 asymmetric activations, int8 per-channel weights by
default) and returns a Q/DQ ``GraphModule``.  :func:`inc_autotune` lets INC's ``autotune`` walk its
config set (activation symmetric/asymmetric, min/max or KL calibration) until the held-out PSNR is
within ``max_drop_db`` of the float model, or keeps the best trial when none is.

The converted graph runs in eager PyTorch through reference Q/DQ ops (correct, slow); the x86
speed-up comes from ``torch.compile`` (inductor lowers Q/DQ + conv to oneDNN int8 kernels), so
:func:`compress.runtime.latency.torch_latency_ms` times both.  Calibration is on packed RAW frames only.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.metrics import psnr_db

Pairs = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class INCResult:
    """The quantized model and what it scores: PSNR in dB on the held-out pairs, before and after."""

    model: nn.Module
    psnr_float: float
    psnr_int8: float
    config: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)  # e.g. {"fp32_1t": .., "int8_2t": ..}

    @property
    def drop_db(self) -> float:
        return self.psnr_float - self.psnr_int8


@torch.no_grad()
def held_out_psnr(model: nn.Module, pairs: Pairs) -> float:
    """Mean per-image PSNR (dB, ``distill.metrics.psnr_db``: capped, so a lossless model scores the cap)
    of ``model`` on ``(raw (4,h,w), rgb (3,2h,2w))`` pairs, output clamped to [0, 1].

    Not ``distill.evaluation.evaluate``: INC's exported Q/DQ graph refuses ``eval()``, and INC's
    relative budget needs a finite score for a lossless trial.
    """
    if not pairs:
        raise ValueError("PSNR needs at least one held-out (raw, rgb) pair")
    scores = [psnr_db(model(raw.unsqueeze(0).float()).clamp(0, 1), rgb.unsqueeze(0)) for raw, rgb in pairs]
    return float(np.mean(scores))


def _quiet_inc() -> None:
    """INC logs every trial and config at INFO on the root handler: keep warnings only."""
    for name in ("neural_compressor", "neural_compressor.common", "neural_compressor.torch"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _example(calibration: torch.Tensor) -> torch.Tensor:
    """Batch 2 of the first frame: torch.export specialises a batch of 1 to exactly 1."""
    return calibration[:1].expand(2, -1, -1, -1).contiguous()


def _export(model: nn.Module, example: torch.Tensor) -> Any:
    from neural_compressor.torch.export import export

    dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    exported = export(copy.deepcopy(model).eval(), (example,), dynamic_shapes=(dims,))
    if exported is None:
        raise RuntimeError("Neural Compressor could not export the model to an aten graph")
    return exported


def _check_inputs(calibration: torch.Tensor) -> torch.Tensor:
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be a non-empty NCHW batch of RAW frames; got {tuple(calibration.shape)}")
    return calibration.float()


def _calibrate_fn(calibration: torch.Tensor, batch: int = 4) -> Callable[[nn.Module], None]:
    def run(prepared: nn.Module) -> None:
        with torch.no_grad():
            for start in range(0, len(calibration), batch):
                prepared(calibration[start : start + batch])
    return run


def inc_static_int8(model: nn.Module, calibration: torch.Tensor, *, act_sym: bool = False,
                    act_algo: str = "minmax") -> nn.Module:
    """One PT2E static INT8 quantization with INC's ``StaticQuantConfig`` (no tuning)."""
    from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare

    _quiet_inc()
    calibration = _check_inputs(calibration)
    exported = _export(model, _example(calibration))
    prepared = prepare(exported, StaticQuantConfig(act_sym=act_sym, act_algo=act_algo))
    _calibrate_fn(calibration)(prepared)
    return convert(prepared)


def inc_autotune(
    model: nn.Module,
    calibration: torch.Tensor,
    eval_pairs: Pairs,
    *,
    max_drop_db: float = 0.1,
    max_trials: int = 4,
) -> INCResult:
    """INC ``autotune`` of PT2E static INT8 against a PSNR budget on ``eval_pairs``.

    INC compares relative scores (``tolerable_loss``), so the dB budget becomes
    ``max_drop_db / psnr_float``.  The first config that meets it wins; if none does within
    ``max_trials``, INC re-quantizes with the best one.  The graph is exported with dynamic batch
    and spatial size, so held-out images of any size (the model's multiple) can be scored.
    """
    from neural_compressor.torch.quantization import StaticQuantConfig, TuningConfig, autotune

    if max_drop_db < 0:
        raise ValueError(f"max_drop_db must be >= 0; got {max_drop_db}")
    _quiet_inc()
    calibration = _check_inputs(calibration)
    model = copy.deepcopy(model).eval()
    psnr_float = held_out_psnr(model, eval_pairs)
    trials: list[dict[str, Any]] = []

    def evaluate(candidate: nn.Module) -> float:
        score = held_out_psnr(candidate, eval_pairs)
        trials.append({"psnr": score})
        return score

    config_set = [StaticQuantConfig.get_config_set_for_tuning()]  # act_sym x act_algo (minmax, kl)
    tune = TuningConfig(config_set=config_set, tolerable_loss=max_drop_db / max(psnr_float, 1e-6),
                        max_trials=max_trials)
    exported = _export(model, _example(calibration))
    quantized = autotune(exported, tune, eval_fn=evaluate, run_fn=_calibrate_fn(calibration),
                         example_inputs=(_example(calibration),))
    if quantized is None:
        raise RuntimeError("Neural Compressor autotune returned no model")
    chosen = getattr(quantized, "qconfig", {})
    config = {}
    for cfg in chosen.values():
        config = {k: v for k, v in cfg.to_dict().items() if k in ("w_dtype", "w_sym", "w_granularity", "w_algo",
                                                                 "act_dtype", "act_sym", "act_granularity", "act_algo")}
    trials = trials[1:]  # the first evaluation is INC's float baseline
    return INCResult(model=quantized, psnr_float=psnr_float, psnr_int8=held_out_psnr(quantized, eval_pairs),
                     config=config, trials=trials)

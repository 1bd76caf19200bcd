"""What ``benchmarks.quant`` and ``benchmarks.quant_qat`` share: the students' training, the held-out scoring and
the export path the INT8 methods start from."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.export.graph_rewrites import rewrite_for_xnnpack_int8
from compress.export.onnx_export import export_onnx
from compress.export.tflite import ConverterFactory
from compress.fold import fold_model
from compress.runtime.parity import run_tflite
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.metrics import psnr
from distill.trainer import TrainSpec, train
from students import create_student

LR = 1e-3
TRAIN: dict[str, Any] = {"lr": LR, "batch_size": 4, "losses": {"l1": 1.0, "ssim": 0.2}}
PATCH = 64
RUNTIMES = ("xnnpack", "builtin")


class Photos:
    """Packed RAW + target batches (one packed size) and the PSNR of any runtime's output on them."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.raw = torch.stack([raw for raw, _ in pairs]).numpy()
        self.rgb = torch.stack([rgb for _, rgb in pairs])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """One frame's NCHW shape (the exported models' input)."""
        _, c, h, w = self.raw.shape
        return (1, int(c), int(h), int(w))

    def psnr(self, out: np.ndarray) -> float:
        return psnr(torch.from_numpy(np.asarray(out, np.float32)).clamp(0, 1), self.rgb)

    def run(self, path: Path, runtime: str) -> np.ndarray:
        return run_tflite(path, self.raw, builtin=runtime == "builtin")

    def run_isolated(self, path: Path, runtime: str) -> np.ndarray | None:
        """``run`` in a child process; ``None`` when LiteRT dies natively there.

        Smallnet-JMU's AI Edge Quantizer model ended the whole benchmark ("free(): double free") when run
        in-process: a crash here costs one row, not every student measured after it."""
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                return pool.submit(run_tflite, path, self.raw, 2, runtime == "builtin").result()
            except BrokenProcessPool:
                return None


def trained(name: str, steps: int, reuse: Path | None, seed: int = 0) -> torch.nn.Module:
    """The student trained ``steps`` steps (or loaded from ``reuse``, same name/steps/recipe), folded, eval."""
    key = json.dumps([name, steps, seed, PATCH, TRAIN], sort_keys=True)
    path = reuse / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt" if reuse is not None else None
    torch.manual_seed(seed)
    model = create_student(name)
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path))
    else:
        data = PairedPatchDataset(load_embedded("train", seed=0), patch_size=PATCH, patches_per_image=32, seed=seed)
        train(model, data, TrainSpec(steps=steps, **TRAIN, log_every=10_000), seed=seed, desc=f"{name} float")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
    folded, _ = fold_model(model.eval())
    return folded.eval()


def int8_source(model: torch.nn.Module, shape: tuple[int, int, int, int], work: Path) -> Path:
    """ONNX at ``shape`` with the export stage's XNNPACK INT8 rewrites (exact in float)."""
    path = export_onnx(model, work / "model.onnx", shape)
    rewrite_for_xnnpack_int8(path)
    return path


class Builds:
    """``extra`` hook: one INT8 model per (label, RangeSetting / SelectivePrecision) inside one conversion."""

    def __init__(self, hooks: dict[str, Any]) -> None:
        self.hooks = hooks

    def __call__(self, factory: ConverterFactory, built: dict[str, Path], work: Path) -> dict[str, Path]:
        out = {}
        for label, hook in self.hooks.items():
            produced = hook(factory, built, work)
            path = work / f"{re.sub(r'[^A-Za-z0-9_.+ -]+', '_', label)}.tflite"  # labels such as "QAT (min/max)"
            shutil.move(produced[hook.key], path)
            out[label] = path
        return out

"""Training throughput (patches/s) of LW-ISP, PyNET and AA-UNet: fp32 vs bf16 autocast vs channels_last vs
torch.compile, and GPU utilisation on CUDA.

    .venv/bin/python -m benchmarks.train_throughput [--device auto] [--scale 1.0] [--batch 8] [--steps 20]

Each figure is the median of ``--steps`` timed steps.  A step is what ``distill.trainer.train`` runs: the
model's forward under autocast, an L1 loss in float32, backward, Adam.  Inputs are random 256x256 RAW
crops (128x128 packed, 4 channels, targets 3x256x256) held on the device, so the numbers measure the
model, not the data pipeline.  ``--scale`` shrinks the crop side (and ``--width-scale`` the models) for a
quick CPU run; the results name the device, the crop and the scales used.  Writes
``benchmarks/results/train_throughput.json`` and its table in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.report import machine, publish
from distill.trainer import resolve_device
from students import create_student
from teachers import create_teacher

MODELS: dict[str, tuple[Callable[..., torch.nn.Module], str, dict[str, float]]] = {
    "lwisp": (create_student, "width", {"width": 1.0}),
    "pynet": (create_teacher, "width", {"width": 1.0}),
    "aaunet": (create_teacher, "base_width", {"base_width": 16}),
}
MODES = {  # name: (autocast dtype, channels_last, compile)
    "fp32": (None, False, False),
    "bf16": (torch.bfloat16, False, False),
    "bf16+channels_last": (torch.bfloat16, True, False),
    "compiled": (None, False, True),
    "compiled+bf16": (torch.bfloat16, False, True),
}


class GpuSampler:
    """Samples GPU utilisation (%) every 100 ms while a mode runs: torch.cuda.utilization (NVML), else
    nvidia-smi.  Empty on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self._stop = device, threading.Event()
        self.samples: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # noqa: BLE001  (no pynvml: fall back to nvidia-smi)
            if not shutil.which("nvidia-smi"):
                return None
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  f"--id={self.device.index or 0}"], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 else None

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_name: str, mode: str, device: torch.device, side: int, batch: int, steps: int,
            warmup: int, width_scale: float) -> dict[str, Any]:
    factory, key, config = MODELS[model_name]
    config = {k: v * width_scale if k == "width" else max(1, round(v * width_scale)) for k, v in config.items()}
    dtype, channels_last, compile_ = MODES[mode]
    torch.manual_seed(0)
    model = factory(model_name, **config).to(device).train()
    memory = torch.channels_last if channels_last else torch.contiguous_format
    # Module.to takes memory_format (see its docstring); torch's typed overloads omit it
    model = model.to(memory_format=memory)  # type: ignore[call-overload]
    forward = torch.compile(model) if compile_ else model
    x = torch.rand(batch, 4, side, side, device=device).contiguous(memory_format=memory)
    target = torch.rand(batch, 3, 2 * side, 2 * side, device=device).contiguous(memory_format=memory)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext

    def step() -> None:
        with autocast():
            pred = forward(x)
        loss = F.l1_loss(pred.float(), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    start = time.perf_counter()
    for _ in range(warmup):  # includes compilation for the compiled modes
        step()
    _sync(device)
    warm_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with GpuSampler(device) as gpu:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)  # the median step: robust to a busy shared machine
    row = {"model": model_name, "mode": mode, "config": config, "patches_per_s": batch / seconds,
           "step_ms": 1000 * seconds, "step_ms_all": [1000 * t for t in times], "warmup_s": warm_s,
           "gpu_util_pct": gpu.mean()}
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {machine()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--scale", type=float, default=1.0, help="crop side scale (1.0 = 256x256 RAW)")
    parser.add_argument("--width-scale", type=float, default=1.0, help="model width scale (1.0 = published)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--skip", nargs="*", default=[], metavar="MODEL:MODE",
                        help="pairs not to measure (listed as skipped), e.g. pynet:compiled where compiling is "
                             "too slow")
    parser.add_argument("--no-publish", action="store_true", help="print only; leave docs and results alone")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    side = max(32, int(128 * args.scale) // 32 * 32)  # packed side: PyNET needs a multiple of 16, >= 32
    rows = []
    for name in args.models:
        for mode in args.modes:
            if f"{name}:{mode}" in args.skip:
                rows.append({"model": name, "mode": mode, "skipped": True})
                continue
            row = measure(name, mode, device, side, args.batch, args.steps, args.warmup, args.width_scale)
            print(f"{name:8s} {mode:20s} {row['patches_per_s']:8.2f} patches/s  {row['step_ms']:9.1f} ms/step",
                  flush=True)
            rows.append(row)
    result = {"device": device_name(device), "torch": torch.__version__, "raw_crop": 2 * side,
              "packed_crop": side, "batch": args.batch, "steps": args.steps, "scale": args.scale,
              "width_scale": args.width_scale, "rows": rows}
    if args.no_publish:
        return
    fp32 = {r["model"]: r["patches_per_s"] for r in rows if r["mode"] == "fp32" and not r.get("skipped")}
    table = ["| model | mode | patches/s | ms/step | vs fp32 | GPU util % | compile+warm-up s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("skipped"):
            table.append(f"| {r['model']} | {r['mode']} | not measured (--skip) | | | | |")
            continue
        ratio = f"{r['patches_per_s'] / fp32[r['model']]:.2f}x" if r["model"] in fp32 else "-"
        util = f"{r['gpu_util_pct']:.0f}" if r["gpu_util_pct"] is not None else "-"
        table.append(f"| {r['model']} | {r['mode']} | {r['patches_per_s']:.2f} | {r['step_ms']:.0f} | {ratio} | "
                     f"{util} | {r['warmup_s']:.1f} |")
    gpu_note = ("" if device.type == "cuda" else
                " **No GPU was available in this session: these are CPU numbers at a reduced scale; GPU "
                "throughput and utilisation are not measured here** (run "
                "`python -m benchmarks.train_throughput --device cuda` on a GPU to fill them in). The CPU "
                "here is shared with other jobs and repeated runs of the same row varied by up to 10x: read "
                "this table as a check that every mode trains, not as a speed-up figure.")
    intro = (f"Device: **{result['device']}**, torch {torch.__version__}. One training step (autocast forward, "
             f"fp32 L1, backward, Adam) on batches of {args.batch} random {2 * side}x{2 * side} RAW crops "
             f"({side}x{side} packed), model widths x{args.width_scale:g}, median step of {args.steps} "
             f"steps after {args.warmup} warm-up steps (compilation included in the warm-up column)."
             + gpu_note)
    publish("train_throughput", "Training throughput: fp32, bf16, channels_last, torch.compile", intro, table, result)


if __name__ == "__main__":
    main()

"""Wall-clock latency of one inference, as an app would see it on this CPU.

Only ``invoke``/``run`` is timed, on random input of the model's own shape and dtype (an int8-I/O
model gets int8 input), after warm-up runs that let XNNPACK / onnxruntime finish their lazy setup.
Median and p90 rather than the mean: one descheduled run should not move the figure.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _summary(run: Callable[[], Any], warmup: int, runs: int, num_threads: int) -> dict[str, float]:
    if runs < 1 or warmup < 0:
        raise ValueError(f"latency needs runs >= 1 and warmup >= 0; got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    ms = np.asarray(times)
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "min_ms": float(ms.min()), "runs": runs, "num_threads": num_threads}


def _random_input(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.random(shape, dtype=np.float32).astype(dtype)


def tflite_latency_ms(path: Path, num_threads: int = 2, warmup: int = 2, runs: int = 10) -> dict[str, float]:
    """``{"median_ms", "p90_ms", "min_ms", "runs", "num_threads"}`` of ``Interpreter.invoke``."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        shape = tuple(int(d) for d in detail["shape"])
        interpreter.set_tensor(detail["index"], _random_input(shape, np.dtype(detail["dtype"]), rng))
    return _summary(interpreter.invoke, warmup, runs, num_threads)


ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def onnx_latency_ms(path: Path, num_threads: int = 2, warmup: int = 2, runs: int = 10,
                    input_shape: tuple[int, ...] | None = None) -> dict[str, float]:
    """Same figures for onnxruntime on CPU with ``num_threads`` intra-op threads.

    ``input_shape`` is needed only for a model exported with dynamic dimensions.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        shape = input_shape or tuple(inp.shape)
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"{path} input {inp.name} has dynamic shape {inp.shape}; pass input_shape")
        if inp.type not in ORT_DTYPES:
            raise ValueError(f"{path} input {inp.name} has unsupported type {inp.type}")
        feeds[inp.name] = _random_input(tuple(shape), np.dtype(ORT_DTYPES[inp.type]), rng)
    return _summary(lambda: session.run(None, feeds), warmup, runs, num_threads)


def torch_latency_ms(model: Any, input_shape: tuple[int, ...], num_threads: int = 2, warmup: int = 2,
                     runs: int = 10, compile: bool = False) -> dict[str, float]:
    """Same figures for PyTorch on CPU (``no_grad``) with ``num_threads`` threads.

    ``compile=True`` times ``torch.compile(model)`` (inductor: the int8 kernels of a Neural Compressor
    Q/DQ graph); compilation falls in the warm-up runs.  A module that can switch modes is timed in
    eval mode and given back as it was (an exported PT2E graph cannot switch and is timed as it is).
    ``torch.set_num_threads`` is process-wide, so the previous setting is restored afterwards.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    was_training = bool(getattr(model, "training", False))
    try:
        model.eval()
    except NotImplementedError:  # torch.export graphs refuse train()/eval()
        was_training = False
    x = torch.from_numpy(_random_input(tuple(input_shape), np.dtype(np.float32), np.random.default_rng(0)))
    fn = torch.compile(model) if compile else model
    try:
        with torch.no_grad():
            return _summary(lambda: fn(x), max(warmup, 1) if compile else warmup, runs, num_threads)
    finally:
        if was_training:
            model.train()
        torch.set_num_threads(previous)

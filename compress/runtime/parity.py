"""Run exported models like PyTorch does (NCHW float in, NCHW float out) and measure how close they are.

Exported files differ from the PyTorch model in layout (TFLite is NHWC), in dtype (int8 I/O) and in
batch size (fixed at export).  These runners hide all three so one PSNR (``distill.metrics.psnr_db``)
compares like with like.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.runtime.tiling import dequantize_output, quantize_input
from distill.metrics import psnr_db


def run_onnx(path: Path, x_nchw: np.ndarray) -> np.ndarray:
    """onnxruntime CPU output of the single-input model ``path`` on float32 ``x_nchw``.

    A model exported with a fixed batch ``b`` runs ``x`` in chunks of ``b``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.ascontiguousarray(x_nchw, dtype=np.float32)
    batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else len(x)
    if len(x) % batch:
        raise ValueError(f"{path} has fixed batch {batch}; got {len(x)} inputs (not a multiple)")
    chunks = [session.run(None, {inp.name: x[start : start + batch]})[0] for start in range(0, len(x), batch)]
    return np.concatenate(chunks)


def run_tflite(path: Path, x_nchw: np.ndarray, num_threads: int = 2, builtin: bool = False) -> np.ndarray:
    """Float NCHW in, float NCHW out through ai-edge-litert, whatever the model's I/O dtype and batch.

    Integer inputs are quantized with the model's own scale/zero point and integer outputs
    dequantized, so an int8-I/O model is compared on the same footing as a float one.  A model
    exported for batch ``b`` runs ``x`` in chunks of ``b``.  By default the XNNPACK delegate runs
    it, as in an app; ``builtin=True`` uses TFLite's own kernels, whose INT8 arithmetic differs.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else OpResolverType.AUTO
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = np.transpose(np.asarray(x_nchw, dtype=np.float32), (0, 2, 3, 1))
    batch = int(inp["shape"][0])
    if tuple(x.shape[1:]) != tuple(int(d) for d in inp["shape"][1:]) or len(x) % batch:
        raise ValueError(f"{path} takes NHWC {tuple(inp['shape'])} (batch {batch}); input NCHW "
                         f"{tuple(x_nchw.shape)} does not fit (batch must be a multiple of {batch})")
    chunks = []
    for start in range(0, len(x), batch):
        interpreter.set_tensor(inp["index"], quantize_input(x[start : start + batch], inp))
        interpreter.invoke()
        chunks.append(dequantize_output(interpreter.get_tensor(out["index"]), out))
    return np.transpose(np.concatenate(chunks), (0, 3, 1, 2))


@torch.no_grad()
def parity_psnr(torch_model: nn.Module, exported_path: Path, inputs_nchw: np.ndarray) -> float:
    """PSNR of the exported ``.onnx`` / ``.tflite`` output against the PyTorch model in eval mode."""
    exported_path = Path(exported_path)
    was_training = torch_model.training
    torch_model.eval()
    try:
        param = next(torch_model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.from_numpy(np.ascontiguousarray(inputs_nchw, dtype=np.float32)).to(device)
        reference = torch_model(x).float().cpu().numpy()
    finally:
        torch_model.train(was_training)
    if exported_path.suffix == ".onnx":
        exported = run_onnx(exported_path, inputs_nchw)
    elif exported_path.suffix == ".tflite":
        exported = run_tflite(exported_path, inputs_nchw)
    else:
        raise ValueError(f"parity needs a .onnx or .tflite file; got {exported_path}")
    return psnr_db(exported, reference)

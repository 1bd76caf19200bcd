"""Pruning, re-parameterization folding, quantization, export, parity and latency."""
import distill.torch_compat  # noqa: F401  (first: torchvision on CPU torch, see that module)

"""Pruning, re-parameterization folding, quantization, export, parity and latency."""

"""Quantization: calibration data, QAT, selective precision, and the x86 (ONNX Runtime / INC) quantizers."""

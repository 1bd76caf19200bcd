"""Compression above the distillation layer, one subpackage per concern.

``pruning`` (torch-pruning with the PixelShuffle rule, budgets, sensitivity), ``quantization``
(calibration, QAT, selective precision, x86 quantizers), ``export`` (ONNX, onnx2tf/TFLite and the
flatbuffer patches), ``runtime`` (running, timing and sizing exported models, tiling) and ``bundle``
(the hand-off folder: card, writing, verify, process); ``fold`` and ``checkpoint`` work on models.
"""

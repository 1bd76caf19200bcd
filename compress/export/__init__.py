"""Export: PyTorch -> ONNX (with graph rewrites) -> onnx2tf -> TFLite, and the TFLite flatbuffer patches."""

"""Exported graphs of the models: ONNX with the whole pipeline inside, run with ONNX Runtime."""

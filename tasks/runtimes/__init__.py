"""Inference sessions (ONNX Runtime, OpenVINO, TensorRT) and preprocessing: the code a registered model runs."""

"""ONNX Runtime implementations of the three stages (numpy + onnxruntime only; never imports torch)."""

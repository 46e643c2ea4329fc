"""Developer tools beside the runtime: the benchmark, the tiny-model maker and the PyTorch-vs-ONNX parity harness.

Only their CLI commands (and the studio's A/B and export report) import them, so a torch-free runtime install
never reaches them by accident.
"""

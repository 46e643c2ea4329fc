"""PyTorch implementations of the neural stages, checkpoint-compatible with the official model files."""

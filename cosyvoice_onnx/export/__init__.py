"""Export of every neural stage to ONNX, with a manifest that ties the files to their source checkpoints."""

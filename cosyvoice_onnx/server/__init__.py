"""The OpenAI-compatible speech API (`cosyvoice-onnx serve`): FastAPI + uvicorn beside the mounted studio.

Nothing here is imported by `import cosyvoice_onnx`: the web stack loads only for the `serve` command.
"""

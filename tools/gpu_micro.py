"""Two GPU measurements behind design choices, run by tools/gpu_check.sh (prints one JSON object).

1. LM decode per token on the static cache: the step run eagerly vs replayed from its captured CUDA graph.
2. Flow estimator: one call through the numpy interface (host -> device -> host) vs on device tensors; the solver
   keeps numpy unless the round trips cost more than 2 % of a call.

usage: python tools/gpu_micro.py MODEL_DIR DEVICE PRECISION
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from cosyvoice_onnx.devices import parse_device
from cosyvoice_onnx.model_files import inspect_model_dir
from cosyvoice_onnx.torch_backend import loader
from cosyvoice_onnx.torch_backend.llm import TorchLanguageModel

STEPS, CALLS, FRAMES = 100, 10, 650


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_ms(lm: TorchLanguageModel, steps: int) -> float:
    rng = np.random.default_rng(0)
    _, cache = lm.prefill(rng.integers(0, 1000, 30), rng.integers(0, 6000, 150))
    _, cache = lm.step(1, cache)  # captures the graph of this slot, when there is one
    start = time.perf_counter()
    for token in rng.integers(0, 6000, steps):
        _, cache = lm.step(int(token), cache)
    return (time.perf_counter() - start) / steps * 1e3


def main(model_dir: str, device_text: str, precision: str) -> dict:
    files = inspect_model_dir(model_dir)
    device = parse_device(device_text)
    out: dict = {"device": str(device), "precision": precision}
    stages = loader.load(files, ["lm", "flow"], device, precision)
    lm = stages["lm"]
    graphed = TorchLanguageModel(lm.model, static_cache=True, cuda_graph=True)
    eager = TorchLanguageModel(lm.model, static_cache=True, cuda_graph=False)
    out["lm_decode_ms_eager"] = decode_ms(eager, STEPS)
    out["lm_decode_ms_graph"] = decode_ms(graphed, STEPS)

    flow = stages["flow"]
    target = flow.device
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 80, FRAMES), dtype=np.float32)
    args = (x, np.ones((2, 1, FRAMES), np.float32), x, np.full(2, 0.5, np.float32),
            rng.standard_normal((2, 80), dtype=np.float32), x)
    flow.estimate(*args, False)
    start = time.perf_counter()
    for _ in range(CALLS):
        flow.estimate(*args, False)
    numpy_s = (time.perf_counter() - start) / CALLS
    tensors = [torch.from_numpy(a).to(target, flow.dtype) for a in args]
    tensors[3] = torch.from_numpy(args[3]).to(target)
    with torch.inference_mode():
        flow.flow.estimator(*tensors, streaming=False)
        sync(target)
        start = time.perf_counter()
        for _ in range(CALLS):
            flow.flow.estimator(*tensors, streaming=False)
        sync(target)
    device_s = (time.perf_counter() - start) / CALLS
    out.update(flow_call_ms_numpy=numpy_s * 1e3, flow_call_ms_device=device_s * 1e3,
               flow_roundtrip_share=(numpy_s - device_s) / numpy_s)
    if target.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(target) / 2**30
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4]), indent=2))

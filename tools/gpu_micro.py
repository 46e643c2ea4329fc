"""Two GPU measurements behind design choices, run by tools/gpu_check.sh (prints one JSON object).

1. LM decode per token on the static cache: the step run eagerly vs replayed from its captured CUDA graph.
2. Flow: the 10-step solve through the numpy reference solver (host <-> device round trips at every step) vs the
   device-resident solve a CUDA flow runs (eager, and with its estimator call captured as a CUDA graph, with
   whether the two give the same bits), and ten bare estimator calls on device tensors (the eager floor).

usage: python tools/gpu_micro.py MODEL_DIR DEVICE PRECISION
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from cosyvoice_onnx.devices import parse_device
from cosyvoice_onnx.flow_solver import solve_cfm
from cosyvoice_onnx.model_files import inspect_model_dir
from cosyvoice_onnx.torch_backend import loader
from cosyvoice_onnx.torch_backend.llm import TorchLanguageModel

STEPS, CALLS, FRAMES, SOLVER_STEPS = 100, 10, 650, 10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(call, device: torch.device) -> float:
    """Mean wall time of `call` over CALLS runs after one warm-up, the device synchronized around them."""
    call()
    sync(device)
    start = time.perf_counter()
    for _ in range(CALLS):
        call()
    sync(device)
    return (time.perf_counter() - start) / CALLS


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
    mu, cond = (rng.standard_normal((1, 80, FRAMES), dtype=np.float32) for _ in range(2))
    spks, mask = rng.standard_normal((1, 80), dtype=np.float32), np.ones((1, 1, FRAMES), np.float32)
    solve_args = (mu, mask, spks, cond, loader.flow_noise()[:, :, :FRAMES], SOLVER_STEPS, 0.7, False)
    numpy_s = seconds(lambda: solve_cfm(flow, *solve_args), target)
    flow.cuda_graph = False
    resident_s = seconds(lambda: flow.solve_resident(*solve_args), target)
    eager_mel = flow.solve_resident(*solve_args)
    flow.cuda_graph = True
    graph_s = seconds(lambda: flow.solve_resident(*solve_args), target)
    graph_mel = flow.solve_resident(*solve_args)
    batch = [torch.from_numpy(np.concatenate([a, a])).to(target, flow.dtype) for a in (mu, mask, mu, spks, cond)]
    x, mask_in, mu_in, spks_in, cond_in = batch
    t = torch.full((2,), 0.5, device=target)
    with torch.inference_mode():
        bare_s = seconds(lambda: flow.flow.estimator(x, mask_in, mu_in, t, spks_in, cond_in, streaming=False),
                         target) * SOLVER_STEPS
    out.update(flow_solve_ms_numpy=numpy_s * 1e3, flow_solve_ms_resident=resident_s * 1e3,
               flow_solve_ms_resident_graph=graph_s * 1e3,
               flow_graph_max_abs_diff=float(np.abs(graph_mel - eager_mel).max()),
               flow_solve_ms_bare_estimator=bare_s * 1e3,
               flow_roundtrip_share_numpy=(numpy_s - bare_s) / numpy_s,
               flow_roundtrip_share_resident=(resident_s - bare_s) / resident_s)
    if target.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(target) / 2**30
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4]), indent=2))

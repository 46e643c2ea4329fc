"""One GPU call on fixed input tensors, captured as a CUDA graph on its first run and replayed after.

A call made of hundreds of small kernels (the LM's decode step, the flow's estimator) spends its time launching
them; a CUDA graph launches them as one. Used by the LM's static cache (static_cache.py) and the flow's
device-resident solve (flow.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

# Eager runs on a side stream before capture, as PyTorch's CUDA-graph notes ask (lazy init, autotuning).
CAPTURE_WARMUP_RUNS = 2


class CapturedStep:
    """`fn(*inputs)` on fixed input tensors, replayed as a CUDA graph when `use_graph` (captured on the first run).

    Without a graph (`use_graph` off, or a CPU tensor) the same function runs eagerly on the same static inputs:
    the "eager replay" path, which is how CPU tests exercise everything up to the capture. Callers write new
    values into the input tensors in place (`tensor.copy_`/`fill_`) before `run()`; `run()` returns the output
    tensor, which a graph overwrites on the next replay.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], use_graph: bool,
                 warmup_runs: int = CAPTURE_WARMUP_RUNS):
        self.fn, self.inputs, self.warmup_runs = fn, inputs, warmup_runs
        self.use_graph = use_graph and all(t.is_cuda for t in inputs)
        self.graph = None
        self.output: torch.Tensor | None = None
        self.capture_error: str | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def run(self) -> torch.Tensor:
        if self.use_graph and self.graph is None:
            try:
                self._capture()
            except RuntimeError as exc:
                # A kernel that cannot be captured must not cost the request: run eagerly from now on, and say so.
                self.use_graph, self.capture_error = False, str(exc).splitlines()[0]
                warnings.warn(f"CUDA graph capture failed, running the step eagerly: {self.capture_error}")
        if self.use_graph:
            self.graph.replay()
            return self.output
        self.output = self.fn(*self.inputs)
        return self.output

    def _capture(self) -> None:
        # The warm-up runs compute the current step for real: fn must be idempotent for unchanged inputs (the
        # LM step writes the same key/value at the same position each time).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_runs):
                self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads keep using the GPU during a capture (the LM decoding ahead while the flow
        # captures, concurrent requests of a server); the default "global" mode would fail their copies and
        # allocations, and this capture with them.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.output = self.fn(*self.inputs)
        self.graph = graph

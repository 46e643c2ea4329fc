"""The speech-token LM on ONNX Runtime: a prefill graph and a one-token decode graph sharing a stacked KV cache.

The cache is one tensor [num_layers, 2 (key, value), kv_heads, cached_len, head_dim], keys stored after RoPE.
It stays an `onnxruntime.OrtValue` between steps: IO binding hands ORT's output straight back as the next input,
so the cache is never copied into a numpy array and, on CUDA, never leaves the GPU (on CPU with a 49 MB cache
this cut the step overhead from 48 to 20 ms). The copies left are inside the graph, which writes present_kv as
a new tensor each step (the contract's grow-by-one cache). The decode graph reads the new token's position
from the cache length, so it needs no position input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..config import ModelConfig
from ..errors import ExportError
from .session import make_session

PREFILL = "lm_prefill"
DECODE = "lm_decode"
PRECISIONS = ("fp32", "fp16", "int8")


def graph_path(export_dir: Path, base: str, precision: str = "fp32") -> Path:
    """`<base>.onnx` for fp32, `<base>.<precision>.onnx` otherwise."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return Path(export_dir) / (f"{base}.onnx" if precision == "fp32" else f"{base}.{precision}.onnx")


def _expected_io(cfg: ModelConfig) -> dict[str, dict[str, list]]:
    """Graph inputs/outputs and their static dims (None = dynamic), per graph."""
    c = cfg.llm
    cache = [c.num_layers, 2, c.num_kv_heads, None, c.head_dim]
    return {
        PREFILL: {"text_ids": [None], "prompt_speech_ids": [None], "logits": [c.speech_vocab_size],
                  "present_kv": cache},
        DECODE: {"token_id": [1], "past_kv": cache, "logits": [c.speech_vocab_size], "present_kv": cache},
    }


def _check_graph(session, base: str, path: Path, expected: dict[str, list]) -> None:
    """A graph exported from another model or an older exporter fails here, by name, not mid-synthesis."""
    found = {a.name: a.shape for a in list(session.get_inputs()) + list(session.get_outputs())}
    for name, dims in expected.items():
        shape = found.get(name)
        ok = shape is not None and len(shape) == len(dims) and all(
            want is None or got == want for got, want in zip(shape, dims))
        if not ok:
            raise ExportError(f"{path}: {base} graph has {name} {shape}, expected {dims} for this model; "
                              "the export is stale: run `cosyvoice-onnx export --model DIR` again")


class OnnxLanguageModel:
    """`LanguageModelStage` on ONNX Runtime: numpy ids in, float32 logits out; the cache is an OrtValue."""

    backend = "onnx"

    def __init__(self, export_dir: Path, cfg: ModelConfig, precision: str = "fp32", threads: int | None = None):
        self.cfg = cfg
        self.precision = precision
        expected = _expected_io(cfg)
        self.sessions = {}
        for base in (PREFILL, DECODE):
            path = graph_path(export_dir, base, precision)
            session = make_session(path, threads=threads)
            _check_graph(session, base, path, expected[base])
            self.sessions[base] = session
        # The cache lives where the graph runs; logits always come back to the host for sampling.
        on_cuda = self.sessions[DECODE].get_providers()[0] == "CUDAExecutionProvider"
        self.cache_device = "cuda" if on_cuda else "cpu"

    def _run(self, base: str, inputs: dict[str, np.ndarray], cache: Any = None) -> tuple[np.ndarray, ort.OrtValue]:
        binding = self.sessions[base].io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, array)
        if isinstance(cache, ort.OrtValue):
            binding.bind_ortvalue_input("past_kv", cache)
        elif cache is not None:
            binding.bind_cpu_input("past_kv", np.ascontiguousarray(cache, dtype=np.float32))
        binding.bind_output("logits", "cpu")
        binding.bind_output("present_kv", self.cache_device)
        self.sessions[base].run_with_iobinding(binding)
        logits, present = binding.get_outputs()
        return logits.numpy(), present

    def prefill(self, text_ids: np.ndarray, prompt_speech_ids: np.ndarray) -> tuple[np.ndarray, ort.OrtValue]:
        text = np.ascontiguousarray(np.asarray(text_ids, dtype=np.int64).reshape(-1))
        prompt = np.ascontiguousarray(np.asarray(prompt_speech_ids, dtype=np.int64).reshape(-1))
        return self._run(PREFILL, {"text_ids": text, "prompt_speech_ids": prompt})

    def step(self, token_id: int, cache: Any) -> tuple[np.ndarray, ort.OrtValue]:
        """`cache` is the OrtValue returned before (a numpy array of the same layout is accepted too)."""
        return self._run(DECODE, {"token_id": np.array([int(token_id)], dtype=np.int64)}, cache)

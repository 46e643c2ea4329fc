"""The speech-token LM on ONNX Runtime: a prefill graph and a one-token decode graph writing one KV cache in place.

The cache of a request is one preallocated buffer per layer and kind ([1, kv_heads, capacity, head_dim], keys
after RoPE, see export/lm_graph.py), in the memory of the device the graphs run on. Each buffer is bound through IO binding as both the past and the present
of GroupQueryAttention, which then writes the new positions in place: no cache copy per step, and on CUDA the
cache never leaves the GPU. A request that outlives its buffers gets larger ones (one copy). The decode binding
is built once per buffer set and reused; a step only rewrites the three small inputs (token, position, length).

On CUDA with `cuda_graph`, the decode session is opened with the provider's graph capture: every input and output
of the decode step is then device memory bound at a fixed address (token and position are updated in place),
`total_sequence_length` is the buffer's capacity (GroupQueryAttention reads the real lengths from seqlens_k when
past and present share one buffer), and each buffer set replays its own graph (`gpu_graph_id`). This path follows
onnxruntime-gpu's documented API and has not been run here (no onnxruntime-gpu on the machines this was built on).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..config import ModelConfig
from ..devices import CPU, Device
from ..errors import ExportError, InputError
from ..plan import graph_files
from .session import make_session, session_device

PREFILL = "lm_prefill"
DECODE = "lm_decode"
# Metadata export/lm_graph.py writes into each graph: the graph layout this runtime can drive (older traced
# exports have none) and the rows of the RoPE tables, the longest context the graphs can hold.
LAYOUT_KEY, LAYOUT = "cosyvoice_lm_layout", "gqa-inplace-1"
MAX_POSITIONS_KEY = "max_positions"
CACHE_KINDS = ("key", "value")
# Capacity is rounded up to this many positions, so similar requests get buffers of the same shape.
CAPACITY_STEP = 256
# At most this many positions are reserved for the decode up front (25 MB of fp32 cache at the real size).
DECODE_HEADROOM = 1024
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def graph_path(export_dir: Path, base: str, precision: str = "fp32") -> Path:
    """The file of graph `base` (PREFILL or DECODE) at `precision`, as plan.graph_files names it."""
    return Path(export_dir) / graph_files("lm", precision)[base]


def cache_name(way: str, kind: str, layer: int) -> str:
    """`past_key.3`, `present_value.0`: the cache input (way "past") or output ("present") of one buffer."""
    return f"{way}_{kind}.{layer}"


def cache_names(num_layers: int) -> list[tuple[str, str]]:
    """(past input, present output) per layer and kind, in buffer order."""
    return [(cache_name("past", kind, layer), cache_name("present", kind, layer))
            for layer in range(num_layers) for kind in CACHE_KINDS]


def _expected_io(cfg: ModelConfig) -> dict[str, dict[str, list]]:
    """Graph inputs/outputs and their static dims (None = dynamic), per graph."""
    c = cfg.llm
    cache = {name: [1, c.num_kv_heads, None, c.head_dim] for pair in cache_names(c.num_layers) for name in pair}
    logits = {"logits": [c.speech_vocab_size]}
    return {
        PREFILL: {"text_ids": [None], "prompt_speech_ids": [None], **logits, **cache},
        DECODE: {"token_id": [1], "seqlens_k": [1], "total_sequence_length": [], **logits, **cache},
    }


def _check_graph(session, base: str, path: Path, expected: dict[str, list]) -> None:
    """A graph exported from another model or an older exporter fails here, by name, not mid-synthesis."""
    stale = "the export is stale: run `cosyvoice-onnx export --model DIR` again"
    layout = session.get_modelmeta().custom_metadata_map.get(LAYOUT_KEY)
    if layout != LAYOUT:
        raise ExportError(f"{path}: {base} graph has layout {layout or '(traced, with a stacked past_kv)'}, "
                          f"this version runs {LAYOUT}; {stale}")
    found = {a.name: a.shape for a in list(session.get_inputs()) + list(session.get_outputs())}
    for name, dims in expected.items():
        shape = found.get(name)
        ok = shape is not None and len(shape) == len(dims) and all(
            want is None or got == want for got, want in zip(shape, dims))
        if not ok:
            raise ExportError(f"{path}: {base} graph has {name} {shape}, expected {dims} for this model; {stale}")


class KVBuffers:
    """The cache buffers of one request, one OrtValue per layer and kind, on the device the graphs run on.

    On CPU they are views of one numpy array (`host`), so growing and reading them needs no ORT round trip.
    The request's logits land in `logits` (per request, so concurrent requests on one model never share it).
    """

    def __init__(self, cfg: ModelConfig, capacity: int, dtype: type, device: Device, graph_id: int = 0):
        c = cfg.llm
        self.capacity, self.dtype, self.device, self.graph_id = capacity, dtype, device, graph_id
        shape = (c.num_layers, len(CACHE_KINDS), 1, c.num_kv_heads, capacity, c.head_dim)
        if not device.is_cuda:
            self.host = np.zeros(shape, dtype)
            self.values = [ort.OrtValue.ortvalue_from_numpy(self.host[layer, kind])
                           for layer in range(shape[0]) for kind in range(shape[1])]
        else:
            self.host = None
            self.values = [ort.OrtValue.ortvalue_from_shape_and_type(list(shape[2:]), dtype, "cuda", device.index)
                           for _ in range(shape[0] * shape[1])]
        self.logits = np.empty(c.speech_vocab_size, np.float32)
        self.decode_binding = None

    def stacked(self, length: int) -> np.ndarray:
        """The first `length` positions as [layers, 2, kv_heads, length, head_dim] on the host."""
        if self.host is not None:
            return self.host[:, :, 0, :, :length].copy()
        layers = len(self.values) // len(CACHE_KINDS)
        arrays = [value.numpy()[0, :, :length] for value in self.values]
        return np.stack(arrays).reshape(layers, len(CACHE_KINDS), *arrays[0].shape)

    def load(self, stacked: np.ndarray) -> None:
        """Writes a host cache [layers, 2, kv_heads, length, head_dim] into the first positions."""
        length = stacked.shape[3]
        if self.host is not None:
            self.host[:, :, 0, :, :length] = stacked
            return
        for value, part in zip(self.values, stacked.reshape(-1, *stacked.shape[2:])):
            full = np.zeros(value.shape(), self.dtype)
            full[0, :, :length] = part
            value.update_inplace(full)


class OnnxLMCache:
    """Opaque cache handle of one request: the buffers and how many positions they hold.

    `OnnxLanguageModel.step` consumes the handle it is given (the buffers are updated in place) and returns a new
    one; passing a consumed handle again raises InputError rather than silently reading a newer cache.
    """

    def __init__(self, buffers: KVBuffers, length: int):
        self.buffers = buffers
        self.length = length
        self.consumed = False

    def numpy(self) -> np.ndarray:
        """The cached keys (after RoPE) and values as [layers, 2, kv_heads, length, head_dim] float32."""
        return self.buffers.stacked(self.length).astype(np.float32, copy=False)


class OnnxLanguageModel:
    """`LanguageModelStage` on ONNX Runtime: numpy ids in, float32 logits out; the cache is an OnnxLMCache."""

    backend = "onnx"

    def __init__(self, export_dir: Path, cfg: ModelConfig, precision: str = "fp32", threads: int | None = None, *,
                 graphs: dict[str, str] | None = None, device: Device = CPU, cuda_graph: bool = True):
        """`graphs`: file names by role (PREFILL, DECODE), as the export's manifest lists them; by default the
        names plan.graph_files gives for `precision`."""
        self.cfg = cfg
        self.precision = precision
        self.device = device
        graphs = graphs or graph_files("lm", precision)
        expected = _expected_io(cfg)
        self.sessions = {}
        for base in (PREFILL, DECODE):
            path = Path(export_dir) / graphs[base]
            # Graph capture only for the decode step: the prefill's shapes change with every request.
            session = make_session(path, threads=threads, device=device, cuda_graph=cuda_graph and base == DECODE)
            _check_graph(session, base, path, expected[base])
            self.sessions[base] = session
        decode = self.sessions[DECODE]
        self.max_positions = int(decode.get_modelmeta().custom_metadata_map[MAX_POSITIONS_KEY])
        cache_type = next(a.type for a in decode.get_inputs() if a.name == cache_names(1)[0][0])
        self.cache_dtype = NUMPY_TYPES[cache_type]
        # The cache lives where the graph runs; logits always come back to the host for sampling.
        self.cache_device = session_device(decode)
        self.cuda_graph = cuda_graph and self.cache_device.is_cuda
        self._names = cache_names(cfg.llm.num_layers)
        self._graph_ids = itertools.count(1)

    def _capacity(self, needed: int, wanted: int = 0) -> int:
        """Positions to allocate: at least `needed`, `wanted` if the RoPE tables reach that far, rounded up."""
        if needed > self.max_positions:
            raise InputError(f"the LM context would reach {needed} positions; the export holds {self.max_positions}")
        return min(-(-max(needed, wanted) // CAPACITY_STEP) * CAPACITY_STEP, self.max_positions)

    def _bind(self, base: str, buffers: KVBuffers) -> ort.IOBinding:
        binding = self.sessions[base].io_binding()
        for value, (past, present) in zip(buffers.values, self._names):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(buffers.logits))
        return binding

    def prefill(self, text_ids: np.ndarray, prompt_speech_ids: np.ndarray) -> tuple[np.ndarray, OnnxLMCache]:
        text = np.ascontiguousarray(np.asarray(text_ids, dtype=np.int64).reshape(-1))
        prompt = np.ascontiguousarray(np.asarray(prompt_speech_ids, dtype=np.int64).reshape(-1))
        length = 1 + len(text) + 1 + len(prompt)
        # Room for the longest decode the sampler allows by default (max_token_text_ratio * text length), up to
        # DECODE_HEADROOM positions; a longer request grows its buffers once in a while.
        headroom = min(int(self.cfg.llm.max_token_text_ratio * len(text)) + 1, DECODE_HEADROOM)
        buffers = KVBuffers(self.cfg, self._capacity(length, length + headroom), self.cache_dtype, self.cache_device)
        binding = self._bind(PREFILL, buffers)
        binding.bind_cpu_input("text_ids", text)
        binding.bind_cpu_input("prompt_speech_ids", prompt)
        self.sessions[PREFILL].run_with_iobinding(binding)
        return buffers.logits.copy(), OnnxLMCache(buffers, length)

    def _from_host(self, stacked: np.ndarray) -> OnnxLMCache:
        """A cache given as a host array [layers, 2, kv_heads, length, head_dim], copied into fresh buffers."""
        c = self.cfg.llm
        layout = (c.num_layers, len(CACHE_KINDS), c.num_kv_heads, c.head_dim)
        if stacked.ndim != 5 or stacked.shape[:3] + stacked.shape[4:] != layout:
            raise InputError(f"cache array of shape {stacked.shape} does not fit this LM")
        buffers = KVBuffers(self.cfg, self._capacity(stacked.shape[3] + 1), self.cache_dtype, self.cache_device)
        buffers.load(stacked.astype(self.cache_dtype, copy=False))
        return OnnxLMCache(buffers, stacked.shape[3])

    def _grown(self, cache: OnnxLMCache) -> KVBuffers:
        """Buffers twice as long holding the same positions, for a request that outlived its capacity."""
        buffers = KVBuffers(self.cfg, self._capacity(cache.length + 1, 2 * cache.buffers.capacity), self.cache_dtype,
                            self.cache_device)
        buffers.load(cache.buffers.stacked(cache.length))
        return buffers

    def step(self, token_id: int, cache: Any) -> tuple[np.ndarray, OnnxLMCache]:
        """Feeds one token after `cache` and returns its logits and the new handle; `cache` is consumed.

        `cache` is the handle from `prefill` or the previous `step` (a host array [layers, 2, kv_heads, length,
        head_dim] is accepted too and copied into fresh buffers).
        """
        if not isinstance(cache, OnnxLMCache):
            cache = self._from_host(np.asarray(cache))
        if cache.consumed:
            raise InputError("this LM cache was already passed to step(); use the cache that step returned")
        cache.consumed = True
        buffers = cache.buffers if cache.length < cache.buffers.capacity else self._grown(cache)
        if self.cuda_graph:
            return self._graph_step(int(token_id), cache.length, buffers)
        if buffers.decode_binding is None:
            binding = self._bind(DECODE, buffers)
            feeds = {"token_id": np.zeros(1, np.int64), "seqlens_k": np.zeros(1, np.int32),
                     "total_sequence_length": np.zeros((), np.int32)}
            values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in feeds.items()}
            for name, value in values.items():
                binding.bind_ortvalue_input(name, value)
            # The OrtValues share memory with the arrays: writing the arrays changes what the next run reads.
            buffers.decode_binding = (binding, feeds, values)
        binding, feeds, _ = buffers.decode_binding
        feeds["token_id"][0] = int(token_id)
        feeds["seqlens_k"][0] = cache.length
        feeds["total_sequence_length"][()] = cache.length + 1
        self.sessions[DECODE].run_with_iobinding(binding)
        return buffers.logits.copy(), OnnxLMCache(buffers, cache.length + 1)

    def _graph_step(self, token_id: int, length: int, buffers: KVBuffers) -> tuple[np.ndarray, OnnxLMCache]:
        """The decode step replayed from the CUDA provider's graph of this buffer set (captured on its first run).

        Token and position are device OrtValues updated in place, the logits a device OrtValue copied back; the
        capacity stands in for total_sequence_length, which the provider reads on the host only at capture.
        """
        if buffers.decode_binding is None:
            device = buffers.device
            binding = self._bind(DECODE, buffers)
            token = ort.OrtValue.ortvalue_from_shape_and_type([1], np.int64, "cuda", device.index)
            seqlens = ort.OrtValue.ortvalue_from_shape_and_type([1], np.int32, "cuda", device.index)
            logits = ort.OrtValue.ortvalue_from_shape_and_type([self.cfg.llm.speech_vocab_size], np.float32, "cuda",
                                                              device.index)
            binding.bind_ortvalue_input("token_id", token)
            binding.bind_ortvalue_input("seqlens_k", seqlens)
            binding.bind_cpu_input("total_sequence_length", np.array(buffers.capacity, np.int32))
            binding.bind_ortvalue_output("logits", logits)
            options = ort.RunOptions()
            buffers.graph_id = next(self._graph_ids)
            options.add_run_config_entry("gpu_graph_id", str(buffers.graph_id))
            buffers.decode_binding = (binding, {"token_id": token, "seqlens_k": seqlens, "logits": logits}, options)
        binding, values, options = buffers.decode_binding
        values["token_id"].update_inplace(np.array([token_id], np.int64))
        values["seqlens_k"].update_inplace(np.array([length], np.int32))
        self.sessions[DECODE].run_with_iobinding(binding, options)
        return values["logits"].numpy(), OnnxLMCache(buffers, length + 1)

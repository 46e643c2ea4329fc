"""The batched LM decode step on ONNX Runtime: up to N requests' caches as rows of one slotted buffer per layer.

`lm_decode_batch` (export/lm_graph.py) takes token_ids [B], seqlens_k [B] and cache buffers [B, kv_heads,
capacity, head_dim]: row b is one request's slot, written in place at its own position. The slots live in one
host array [layers, 2, slots, kv_heads, capacity, head_dim]; a step binds the rows 0 .. highest leased slot (a
prefix of the array is contiguous, so no copy), and requests fill the lowest free slot first to keep it short.

A row that is leased but not in this step (its request is busy elsewhere) is fed a dummy token at its own next
position: the garbage key/value lands where its next real step writes anyway. A request whose prefix does not fit
a slot, that finds every slot taken, or that reaches the slot capacity continues on a private cache through the
single-request graphs (OnnxLanguageModel), so nothing is refused for lack of a slot.

The prefill of a request runs beside the batched steps of the others (on a slot row the steps' binding may
cover: see `prefill`); slot bookkeeping and the batched run hold one lock.
CPU only: on CUDA the cache would have to be device memory bound per prefix (not built yet).
"""

from __future__ import annotations

import heapq
import threading
import weakref
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import ExportError, InputError
from ..plan import graph_files
from .lm import (CACHE_KINDS, DECODE, LAYOUT, LAYOUT_KEY, PREFILL, KVBuffers, OnnxLanguageModel, OnnxLMCache,
                 cache_names)
from .session import make_session

BATCH_DECODE = "lm_decode_batch"
# Metadata of the batched graph: the SHA-256 of the LM checkpoint it was built from (the manifest's sources.llm).
SOURCE_KEY = "source_llm_sha256"
# Positions per slot unless asked otherwise: prompt + a long sentence's tokens (25 kB per position at the real
# size, so 8 slots hold 400 MB; numpy's zeros are touched only where written).
DEFAULT_SLOT_CAPACITY = 2048


def batch_graph_name(precision: str) -> str:
    """`lm_decode_batch.onnx`, `lm_decode_batch.int8.onnx`: named like the precision's single decode graph."""
    return graph_files("lm", precision)[DECODE].replace(DECODE, BATCH_DECODE, 1)


class _SlotView:
    """One slot row as the single-request prefill graph binds it ([1, kv_heads, capacity, head_dim] per buffer)."""

    def __init__(self, host: np.ndarray, slot: int, vocab: int):
        self.values = [ort.OrtValue.ortvalue_from_numpy(host[layer, kind, slot:slot + 1])
                       for layer in range(host.shape[0]) for kind in range(host.shape[1])]
        self.logits = np.empty(vocab, np.float32)


class SlotCache:
    """Cache handle of a request in a slot: the slot's lease and how many positions it holds (consumed by a step)."""

    def __init__(self, lease: _Lease, length: int):
        self.lease, self.length = lease, length
        self.consumed = False


class _Lease:
    """A request's hold on a slot; every handle of the request shares it, the last one gone frees the slot."""

    def __init__(self, owner: OnnxBatchedLM, slot: int):
        self.slot = slot
        self.release = weakref.finalize(self, owner._free_slot, slot)


class OnnxBatchedLM:
    """`LanguageModelStage` plus `step_batch` on ONNX Runtime (CPU): the single-request graphs of `base` for
    prefill and overflow, the batched decode graph for the rows in slots."""

    backend = "onnx"

    def __init__(self, base: OnnxLanguageModel, path: Path, slots: int, expected_source: str | None,
                 capacity: int = DEFAULT_SLOT_CAPACITY, threads: int | None = None):
        if base.cache_device.is_cuda:
            raise InputError("batch_decode on the ONNX LM runs on the CPU only; use the torch LM or batch_decode=1 "
                             "on a GPU")
        if slots < 1:
            raise InputError(f"batch_decode needs at least 1 slot, got {slots}")
        self.base, self.cfg, self.path = base, base.cfg, Path(path)
        self.session = _open_checked(self.path, base, expected_source, threads)
        c = self.cfg.llm
        self.capacity = min(int(capacity), base.max_positions)
        self.host = np.zeros((c.num_layers, len(CACHE_KINDS), slots, c.num_kv_heads, self.capacity, c.head_dim),
                             base.cache_dtype)
        self.lengths = np.zeros(slots, np.int32)
        self._free = list(range(slots))
        self._views: dict[int, _SlotView] = {}
        self._bindings: dict[int, tuple] = {}
        self._names = cache_names(c.num_layers)
        self._lock = threading.RLock()  # a slot lease may be finalized by a GC run inside the lock

    @property
    def slots(self) -> int:
        return len(self.lengths)

    def free_slots(self) -> int:
        with self._lock:
            return len(self._free)

    # ---------------------------------------------------------------- slots

    def _lease(self) -> _Lease | None:
        return _Lease(self, heapq.heappop(self._free)) if self._free else None

    def _free_slot(self, slot: int) -> None:
        with self._lock:
            self.lengths[slot] = 0
            heapq.heappush(self._free, slot)

    def _rows(self) -> int:
        """Rows the next step binds: up to the highest leased slot."""
        leased = set(range(self.slots)) - set(self._free)
        return max(leased) + 1 if leased else 0

    # ---------------------------------------------------------------- LanguageModelStage

    def prefill(self, text_ids: np.ndarray, prompt_speech_ids: np.ndarray):
        text = np.ascontiguousarray(np.asarray(text_ids, dtype=np.int64).reshape(-1))
        prompt = np.ascontiguousarray(np.asarray(prompt_speech_ids, dtype=np.int64).reshape(-1))
        length = 1 + len(text) + 1 + len(prompt)
        with self._lock:
            lease = self._lease() if length < self.capacity else None
            if lease is None:
                return self.base.prefill(text, prompt)
            view = self._views.get(lease.slot)
            if view is None:
                view = self._views[lease.slot] = _SlotView(self.host, lease.slot, self.cfg.llm.speech_vocab_size)
            # While the prefill writes positions 0 .. length-1 outside the lock, batched steps running meanwhile
            # put this row's dummy key/value at the last position, which the prefill never writes.
            self.lengths[lease.slot] = self.capacity - 1
        binding = self.base._bind(PREFILL, view)
        binding.bind_cpu_input("text_ids", text)
        binding.bind_cpu_input("prompt_speech_ids", prompt)
        try:
            self.base.sessions[PREFILL].run_with_iobinding(binding)
        except BaseException:
            lease.release()
            raise
        with self._lock:
            self.lengths[lease.slot] = length
        return view.logits.copy(), SlotCache(lease, length)

    def step(self, token_id: int, cache):
        result = self.step_batch([token_id], [cache])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def step_batch(self, token_ids: list[int], caches: list) -> list:
        """(logits, new cache) per row, or the exception that row raised; every given cache is consumed."""
        results: list = [None] * len(caches)
        in_slots = []
        for i, (token, cache) in enumerate(zip(token_ids, caches)):
            if isinstance(cache, SlotCache):
                if cache.consumed:
                    results[i] = InputError("this LM cache was already passed to step(); use the cache that "
                                            "step returned")
                else:
                    cache.consumed = True
                    in_slots.append(i)
                continue
            try:
                results[i] = self.base.step(token, cache)
            except Exception as exc:  # one request's bad cache fails that request only
                results[i] = exc.with_traceback(None)   # its traceback would keep this batch's caches alive
        if in_slots:
            with self._lock:
                logits = self._run(token_ids, caches, in_slots)
                for i in in_slots:
                    results[i] = self._advanced(caches[i], logits[caches[i].lease.slot])
        return results

    def _run(self, token_ids: list[int], caches: list, rows: list[int]) -> np.ndarray:
        count = self._rows()
        binding, tokens, seqlens, total, logits = self._binding(count)
        tokens[:] = 0
        seqlens[:] = self.lengths[:count]
        for i in rows:
            slot = caches[i].lease.slot
            if caches[i].length != self.lengths[slot]:
                raise InputError("an LM cache handle does not match its slot (a stale handle)")
            tokens[slot] = int(token_ids[i])
        total[()] = int(seqlens.max()) + 1
        self.session.run_with_iobinding(binding)
        return logits

    def _binding(self, count: int) -> tuple:
        """The IO binding of the first `count` slot rows, built once per count (numpy arrays shared with it)."""
        if count not in self._bindings:
            binding = self.session.io_binding()
            for (past, present), (layer, kind) in zip(self._names, np.ndindex(self.host.shape[:2])):
                value = ort.OrtValue.ortvalue_from_numpy(self.host[layer, kind, :count])
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            tokens, seqlens = np.zeros(count, np.int64), np.zeros(count, np.int32)
            total = np.zeros((), np.int32)
            logits = np.empty((count, self.cfg.llm.speech_vocab_size), np.float32)
            for name, array in (("token_ids", tokens), ("seqlens_k", seqlens), ("total_sequence_length", total)):
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
            self._bindings[count] = (binding, tokens, seqlens, total, logits)
        return self._bindings[count]

    def _advanced(self, cache: SlotCache, logits: np.ndarray):
        """The row's logits and its next handle; a slot that is now full moves to a private cache and is freed."""
        slot, length = cache.lease.slot, cache.length + 1
        self.lengths[slot] = length
        if length < self.capacity:
            return logits.copy(), SlotCache(cache.lease, length)
        buffers = KVBuffers(self.cfg, self.base._capacity(length + 1, 2 * length), self.base.cache_dtype,
                            self.base.cache_device)
        buffers.load(self.host[:, :, slot, :, :length])
        self.lengths[slot] = 0
        heapq.heappush(self._free, slot)
        cache.lease.release.detach()
        return logits.copy(), OnnxLMCache(buffers, length)


def _open_checked(path: Path, base: OnnxLanguageModel, expected_source: str | None, threads: int | None):
    """The batched graph's session, refused by name when missing, of another layout or from other weights."""
    how = "run `cosyvoice-onnx export --model DIR --batch-decode`"
    if not path.exists():
        raise ExportError(f"{path}: no batched decode graph for batch_decode; {how}")
    session = make_session(path, threads=threads, device=base.device, cuda_graph=False)
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get(LAYOUT_KEY) != LAYOUT:
        raise ExportError(f"{path}: layout {meta.get(LAYOUT_KEY)}, this version runs {LAYOUT}; {how}")
    if expected_source is not None and meta.get(SOURCE_KEY) != expected_source:
        raise ExportError(f"{path}: built from another LM checkpoint than this export's; {how}")
    c = base.cfg.llm
    found = {a.name: a.shape for a in session.get_inputs()}
    cache = found.get(cache_names(1)[0][0])
    if cache is None or len(cache) != 4 or cache[1] != c.num_kv_heads or cache[3] != c.head_dim:
        raise ExportError(f"{path}: its cache {cache} does not fit this model's LM; {how}")
    return session

"""Batched LM decode across concurrent requests: one scheduler thread runs the decode steps of up to N requests
as one batched step of the model.

A decode step reads every LM weight for one row of activations, so on a CPU (and a GPU) it costs nearly the same
for a few rows as for one; requests that decode at the same time share that read.

`BatchingLM` is a `LanguageModelStage`: each request still runs the ordinary decode loop (lm_decode.py) on its
own thread with its own sampler, seed, stop rule and token list; only its `step` call is handed to the scheduler,
which waits briefly for the other active requests' steps, runs them as one `step_batch` of the wrapped model and
hands each request its own logits back. Prefill stays per request. Nothing of a request lives in the scheduler
but its pending step, so a request that ends, fails or times out simply stops calling `step` and its handles
dying frees its place (a weakref finalizer, no explicit close needed).

A batched matrix product rounds differently from a one-row one (GEMM vs GEMV kernels), so a request's logits in a
batch may differ from its logits alone in the last float32 bits: tokens come out the same unless a draw falls
within that rounding of a boundary (tests/test_lm_batching.py checks identical tokens). batch_decode=1 (or off)
is today's path, untouched.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

# How long the scheduler waits for the other active requests' steps before running a partial batch: about the
# time a request spends sampling between two steps, far below one step of a real-size model.
DEFAULT_MAX_WAIT_S = 0.005
# The scheduler thread ends after this long without steps (and starts again with the next one), so an engine
# nobody uses any more is not kept alive by its thread.
IDLE_EXIT_S = 2.0
# Upper bound of batch_decode: rows in one step (and, on ONNX, cache slots held in memory).
MAX_BATCH = 64


class _Ticket:
    """One request's place among the active ones, from its prefill until its last cache handle is gone."""

    def __init__(self, scheduler: BatchingLM):
        scheduler._join()
        self.done = weakref.finalize(self, scheduler._leave)


class _Handle:
    """The cache handle a request gets: the wrapped model's cache plus the request's ticket."""

    def __init__(self, cache: Any, ticket: _Ticket):
        self.cache, self.ticket = cache, ticket
        self.consumed = False


class _Step:
    def __init__(self, token: int, cache: Any):
        self.token, self.cache = token, cache
        self.result: Any = None
        self.ready = threading.Event()


class BatchingLM:
    """`LanguageModelStage` over a model with `step_batch` (TorchLanguageModel, OnnxBatchedLM) that runs the steps
    of concurrent requests together, up to `max_batch` rows at a time."""

    def __init__(self, lm, max_batch: int, max_wait_s: float = DEFAULT_MAX_WAIT_S):
        if not 1 <= int(max_batch) <= MAX_BATCH:
            raise InputError(f"batch_decode must be in 1 .. {MAX_BATCH}, got {max_batch}")
        self.lm, self.max_batch, self.max_wait_s = lm, int(max_batch), float(max_wait_s)
        self.backend = lm.backend
        self.batch_sizes: Counter[int] = Counter()  # rows per step run so far (what the tests and bench read)
        self._cond = threading.Condition()
        self._pending: list[_Step] = []
        self._active = 0
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> int:
        """Requests between their prefill and their last step."""
        return self._active

    def _join(self) -> None:
        with self._cond:
            self._active += 1

    def _leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()  # a batch waiting for this request's step must not wait any longer

    # ---------------------------------------------------------------- LanguageModelStage

    def prefill(self, text_ids: np.ndarray, prompt_speech_ids: np.ndarray) -> tuple[np.ndarray, _Handle]:
        logits, cache = self.lm.prefill(text_ids, prompt_speech_ids)
        return logits, _Handle(cache, _Ticket(self))

    def step(self, token_id: int, cache: _Handle) -> tuple[np.ndarray, _Handle]:
        """Waits for this request's row of the next batched step; `cache` is consumed."""
        if not isinstance(cache, _Handle):
            raise InputError("this LM cache did not come from this model's prefill")
        if cache.consumed:
            raise InputError("this LM cache was already passed to step(); use the cache that step returned")
        cache.consumed = True
        item = _Step(int(token_id), cache.cache)
        with self._cond:
            self._start()
            self._pending.append(item)
            self._cond.notify_all()
        item.ready.wait()
        result, item = item.result, None
        if isinstance(result, BaseException):
            try:
                raise result
            finally:
                result = None   # the raised error's traceback holds this frame: no cycle back to the error
        logits, new_cache = result
        return logits, _Handle(new_cache, cache.ticket)

    # ---------------------------------------------------------------- the scheduler thread

    def _start(self) -> None:
        """Called holding the lock: the scheduler thread, started unless it is running."""
        if self._thread is None:
            # A daemon: it only ever waits for steps, and holds no resource a process exit must release.
            self._thread = threading.Thread(target=self._loop, name="lm-batch", daemon=True)
            self._thread.start()

    def _next_batch(self) -> list[_Step] | None:
        """The next steps to run together, or None (the thread ends) after IDLE_EXIT_S without any."""
        with self._cond:
            while not self._pending:
                if not self._cond.wait(IDLE_EXIT_S) and not self._pending:
                    self._thread = None
                    return None
            deadline = time.monotonic() + self.max_wait_s
            while len(self._pending) < min(self.max_batch, self._active):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)
            del batch  # nothing of a finished step may stay referenced while the thread waits

    def _run(self, batch: list[_Step]) -> None:
        """One batched step. Its own frame, so nothing of the batch outlives it here: a request's last cache must
        die with the request (it holds the request's slot)."""
        try:
            results = self.lm.step_batch([s.token for s in batch], [s.cache for s in batch])
        except BaseException as exc:  # handed to every request of this step, raised on its own thread
            results = [_row_error(exc) for _ in batch]
        self.batch_sizes[len(batch)] += 1
        for item, result in zip(batch, results):
            item.result = result
            item.ready.set()


def _row_error(exc: BaseException) -> BaseException:
    """One request's copy of a failed step's error, without the traceback: each request raises its own copy on
    its own thread, and a kept traceback would hold the batch's caches (and ONNX slots) until a GC pass."""
    try:
        error = copy.copy(exc)
    except Exception:   # an error type that cannot be copied is shared
        error = exc
    return error.with_traceback(None)


def batching_lm(lm, max_batch: int, export_dir: str | Path | None = None, max_wait_s: float = DEFAULT_MAX_WAIT_S,
                slot_capacity: int | None = None) -> BatchingLM:
    """`lm` (a loaded LM stage) with its decode steps batched across requests, up to `max_batch` at a time.

    A torch LM batches as it is; an ONNX LM needs the batched decode graph of its precision in `export_dir`
    (`cosyvoice-onnx export --batch-decode`), which is checked against the export's LM checkpoint.
    """
    if lm.backend == "torch":
        if getattr(lm, "static_cache", False):
            # Its step_batch would run the rows one after another on the scheduler thread: slower than no batching.
            raise InputError("batch_decode is not available on the PyTorch LM's static (CUDA graph) cache; run "
                             "without batch_decode on the GPU, or use the CPU")
        return BatchingLM(lm, max_batch, max_wait_s)
    from .manifest import read_manifest
    from .onnx_backend.lm_batch import DEFAULT_SLOT_CAPACITY, OnnxBatchedLM, batch_graph_name

    if export_dir is None:
        raise InputError("batch_decode on the ONNX LM needs the export folder")
    export_dir = Path(export_dir)
    source = read_manifest(export_dir).get("sources", {}).get("llm", {}).get("sha256")
    batched = OnnxBatchedLM(lm, export_dir / batch_graph_name(lm.precision), max_batch, source,
                            capacity=slot_capacity or DEFAULT_SLOT_CAPACITY)
    return BatchingLM(batched, max_batch, max_wait_s)

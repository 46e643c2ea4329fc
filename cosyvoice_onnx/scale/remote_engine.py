"""The server's side of `serve --ray`: an engine stand-in whose calls are answered by Serve replicas, and the
pool that admits requests to them.

`create_app` takes any object with the engine calls it uses (`synthesize`, `stream`, `prompt_from_audio`,
`voice_store`, `plan`, `sample_rate`). `ReplicaEngine` sends each call to a replica through a Serve handle:
every wait is bounded (the request's own time limit, twice, plus slack: once for its turn, once for its run),
and a call whose replica dies is sent again to another one, up to `retries` times, then fails as
ReplicaUnavailable (HTTP 503). A stream that loses its replica after some chunks is replayed on another one and
the chunks already sent are skipped: the same request and seed on the same plan make the same chunks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RequestTimeout
from ..request import DEFAULT_MAX_SECONDS, SynthesisRequest
from ..server.pool import SynthesisPool
from ..voices import VoiceStore
from .ray_runtime import Reply, ReplicaError, ReplicaUnavailable, first_line, retryable_errors

PROMPT_WAIT_S = 120.0      # a voice upload: one prompt extraction on a 3-10 s clip
SLACK_S = 30.0             # transfer and a busy replica's turn on top of the time limit
RETRY_PAUSE_S = 0.5        # lets the router learn that a replica is gone before the next try


class ReplicaEngine:
    def __init__(self, handle, description: dict, retries: int = 2):
        self._handle = handle
        self.plan = description["plan"]
        self.sample_rate = description["sample_rate"]
        self._fingerprint = description["fingerprint"]
        self.max_seconds = DEFAULT_MAX_SECONDS
        self.retries = retries
        self._retryable = retryable_errors()
        from ray.exceptions import RayError
        from ray.serve.exceptions import RayServeException
        self._ray_error = (RayError, RayServeException, *self._retryable)   # Serve's errors are not RayErrors
        self._lock = threading.Lock()
        self.served: Counter[str] = Counter()   # replica -> requests it answered
        self.retried = 0                        # tries sent again after their replica went away
        self.unavailable = 0                    # requests that ran out of tries (503)

    def voice_store(self, root: str | Path) -> VoiceStore:
        return VoiceStore(root, self._fingerprint)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"served": dict(self.served), "retried": self.retried, "unavailable": self.unavailable}

    # ---------------------------------------------------------------- calls

    def synthesize(self, request: SynthesisRequest):
        return self._call("synthesize", (request,), self._deadline(request))

    def prompt_from_audio(self, clip, transcript: str = ""):
        return self._call("prompt_from_audio", (clip, transcript), time.monotonic() + PROMPT_WAIT_S)

    def stream(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """The chunks, awaited on the event loop (`ReplicaPool.stream` takes this async iterator)."""
        return self._stream(request, self._deadline(request))

    # ---------------------------------------------------------------- how

    def _deadline(self, request: SynthesisRequest) -> float:
        return time.monotonic() + 2 * (request.max_seconds or self.max_seconds) + SLACK_S

    def _call(self, method: str, args: tuple, deadline: float) -> Any:
        """One blocking call (on a pool thread), sent again when its replica goes away."""
        for number in range(self.retries + 1):
            if number:
                time.sleep(RETRY_PAUSE_S)
            response = getattr(self._handle, method).remote(*args)
            try:
                reply: Reply = response.result(timeout_s=self._left(deadline, response))
            except TimeoutError:
                response.cancel()
                raise RequestTimeout("no replica finished the request within its time limit") from None
            except self._ray_error as exc:
                self._failed(number, exc)
                continue
            self._count(reply.worker)
            return reply.unwrap()
        raise AssertionError("unreachable: the last try raises")

    async def _stream(self, request: SynthesisRequest, deadline: float) -> AsyncIterator[np.ndarray]:
        sent = 0
        for number in range(self.retries + 1):
            if number:
                await asyncio.sleep(RETRY_PAUSE_S)
            chunks = self._handle.options(stream=True).stream.remote(request)
            made, worker, finished = 0, None, False
            try:
                while True:
                    try:
                        reply: Reply = await asyncio.wait_for(chunks.__anext__(), self._left(deadline, chunks))
                    except StopAsyncIteration:
                        finished = True
                        break
                    worker, chunk = reply.worker, reply.unwrap()
                    made += 1
                    if made > sent:      # a replay skips what the client has already
                        sent += 1
                        yield chunk
            except asyncio.TimeoutError:
                raise RequestTimeout("no replica finished the stream within its time limit") from None
            except self._ray_error as exc:
                self._failed(number, exc)
                continue
            finally:
                if not finished:
                    chunks.cancel()
            if worker is not None:
                self._count(worker)
            return

    def _left(self, deadline: float, response) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            response.cancel()
            raise RequestTimeout("no replica finished the request within its time limit")
        return left

    def _count(self, worker: str) -> None:
        with self._lock:
            self.served[worker] += 1

    def _failed(self, number: int, exc: BaseException) -> None:
        """A try lost its replica: counted, and on the last try the request fails as ReplicaUnavailable. Any other
        Ray failure is not the replica's absence: ReplicaError at once."""
        if not isinstance(exc, self._retryable):
            raise ReplicaError(f"a replica failed ({type(exc).__name__}: {first_line(exc)})") from None
        with self._lock:
            if number < self.retries:
                self.retried += 1
                return
            self.unavailable += 1
        raise ReplicaUnavailable(f"no replica could finish the request ({number + 1} tries; last: "
                                 f"{type(exc).__name__}: {first_line(exc)}); retry shortly") from None


class ReplicaPool(SynthesisPool):
    """SynthesisPool's admission and refusal in front of the replicas. `run` is inherited: its threads wait on
    replicas instead of computing. `stream` takes the async chunk iterator that `ReplicaEngine.stream` returns and
    awaits it on the event loop, so a stream holds no thread."""

    async def stream(self, start: Callable[[], AsyncIterator[Any]]) -> AsyncIterator[Any]:
        self._admit()
        chunks = None
        try:
            chunks = start()
            async for chunk in chunks:
                yield chunk
        finally:
            self._release()
            if chunks is not None:
                await chunks.aclose()

"""Where requests run: a bounded thread pool over one shared engine, with a bounded number waiting.

The engine keeps no per-request state, so requests run side by side on it up to `concurrency`; up to
`max_queue` more wait, and beyond that a request is refused at once (HTTP 429) instead of piling up.

Batching across requests happens below the pool, in the engine's LM stage (`serve --batch N`, lm_batching.py):
the pool's workers are the requests that decode together, so it runs at least N of them at once.
This is the seam for replicas (e.g. Ray Serve): a replacement only needs `run(fn)` (one call, awaited) and
`stream(start)` (chunks as an async iterator) with the same refusal.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


class QueueFull(Exception):
    """Every worker is busy and the waiting line is full."""


class SynthesisPool:
    def __init__(self, concurrency: int, max_queue: int):
        if concurrency < 1 or max_queue < 0:
            raise ValueError("concurrency must be at least 1 and max_queue at least 0")
        self.concurrency, self.max_queue = concurrency, max_queue
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="synthesis")
        self._admitted = 0
        self._lock = threading.Lock()

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.concurrency + self.max_queue:
                raise QueueFull(f"the server is busy: {self.concurrency} request(s) running and {self.max_queue} "
                                "waiting; try again shortly")
            self._admitted += 1

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    @property
    def admitted(self) -> int:
        """Requests running or waiting now."""
        return self._admitted

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a worker thread; raises QueueFull when no place is left."""
        self._admit()
        try:
            return await asyncio.wrap_future(self._executor.submit(fn, *args))
        finally:
            self._release()

    async def stream(self, start: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """The items of `start()` iterated on one worker thread (it holds the worker until the last item or until
        the consumer stops), handed to the event loop as they come. The first step raises QueueFull when full."""
        self._admit()
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            iterator = None
            try:
                iterator = start()
                for item in iterator:
                    loop.call_soon_threadsafe(items.put_nowait, item)
                    if stop.is_set():          # the client went away: stop making audio nobody hears
                        break
                loop.call_soon_threadsafe(items.put_nowait, _DONE)
            except BaseException as exc:       # handed to the consumer, which raises it there
                loop.call_soon_threadsafe(items.put_nowait, exc)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

        future = self._executor.submit(produce)
        future.add_done_callback(lambda _: self._release())
        try:
            while True:
                item = await items.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

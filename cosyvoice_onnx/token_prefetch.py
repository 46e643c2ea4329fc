"""Streaming overlap: the LM decodes the next chunk's speech tokens in a thread while the flow and vocoder work on
this chunk, as the official code's LM thread does on a GPU.

The tokens are the same ones in the same order: the sampler is drawn from by the decoding thread alone, one step
after another, so a request's audio is identical with and without the overlap. Where the LM and the flow share
the same few CPU cores the overlap only moves work around and slows the first audio (measured on 2 cores: see the
README's "CPU speed"), so the engine turns it on by default only where the LM runs on a GPU.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

_END = object()
# How often a decoding thread that is ahead by `ahead` tokens looks whether its stream was closed.
_STOP_POLL_S = 0.05


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(tokens: Iterator[int], ahead: int) -> Iterator[int]:
    """`tokens` decoded in a thread of their own, at most `ahead` tokens before the consumer, yielded as they come.

    The thread starts at the first `next()`. An error in the decoding (a time limit, a failed step) is raised
    here, after the tokens made before it. Closing this generator early (a client gone) stops the decoding after its
    current step and closes `tokens`.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1, got {ahead}")
    handoff: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_STOP_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for token in tokens:
                if not hand_over(token):
                    return
        except BaseException as error:  # handed to the consumer, which raises it in its own thread
            hand_over(_Failure(error))
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()
        hand_over(_END)

    worker = threading.Thread(target=decode, name="cosyvoice-lm-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()

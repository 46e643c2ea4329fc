"""A one-line progress bar with ETA for the terminal (tqdm is not a core dependency; this is 30 lines)."""

from __future__ import annotations

import sys
import time

from .synthesize import ItemResult


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """`update(done, total, result)` redraws the bar in place on a terminal, one line per item elsewhere."""

    def __init__(self, stream=None, width: int = 24):
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.skipped = 0    # resumed items and unreadable lines: instant, so left out of the ETA


    def update(self, done: int, total: int, result: ItemResult) -> None:
        elapsed = time.perf_counter() - self.start
        if result.resumed or not result.key:
            self.skipped += 1
        worked = done - self.skipped
        fraction = done / total if total else 1.0
        eta = _clock(0) if done == total else _clock(elapsed / worked * (total - done)) if worked else "?"
        filled = round(self.width * fraction)
        state = "failed" if result.error else "resumed" if result.resumed else result.status
        line = (f"[{'#' * filled}{'-' * (self.width - filled)}] {done}/{total} {fraction:4.0%} "
                f"{_clock(elapsed)} elapsed, ETA {eta} · {result.name} {state}")
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if done == total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

"""Progress as events: what a long operation reports, for a CLI line, a Gradio bar or server-sent events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """`done` of `total` units of `stage` are finished (total 0: unknown). `message` is one readable line."""

    stage: str
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0


OnEvent = Callable[[ProgressEvent], None]

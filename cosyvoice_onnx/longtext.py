"""Long text: segment-by-segment synthesis, joins between segments (none / crossfade / silence) and the report."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .duration import DurationTarget, fit_samples
from .errors import InputError

# "none" is the official behaviour: segment audio concatenated as it comes.
JOIN_METHODS = ("none", "crossfade", "silence")
DEFAULT_JOIN_MS = 40.0
MAX_JOIN_MS = 2000.0


def raised_cosine_fade(length: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) of `length` samples summing to 1 everywhere, with zero slope at both ends."""
    fade_in = (0.5 - 0.5 * np.cos(np.pi * (np.arange(length) + 0.5) / length)).astype(np.float32)
    return (np.float32(1.0) - fade_in).astype(np.float32), fade_in


def check_join(method: str, join_ms: float) -> None:
    if method not in JOIN_METHODS:
        raise InputError(f"unknown join {method!r}; choose one of {', '.join(JOIN_METHODS)}")
    if not 0 <= join_ms <= MAX_JOIN_MS:
        raise InputError(f"join_ms {join_ms} is outside 0 .. {MAX_JOIN_MS:.0f}")


@dataclass(frozen=True)
class Joiner:
    """How consecutive segments meet: `samples` is the cross-fade overlap or the silence length."""

    method: str = "none"
    samples: int = 0

    @classmethod
    def create(cls, method: str, join_ms: float, sample_rate: int) -> "Joiner":
        check_join(method, join_ms)
        samples = 0 if method == "none" else round(join_ms * sample_rate / 1000)
        return cls(method, samples)

    def overhead(self, segments: int) -> int:
        """Net samples the joins add to the summed segment lengths (negative for cross-fades)."""
        joins = max(segments - 1, 0)
        if self.method == "silence":
            return joins * self.samples
        return -joins * self.samples if self.method == "crossfade" else 0

    def join(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        parts = list(self.stream([piece] for piece in pieces))
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)

    def stream(self, segments: Iterable[Iterable[np.ndarray]]) -> Iterator[np.ndarray]:
        """Joins segments given as chunk iterables, yielding audio as soon as it is final.

        A cross-fade holds back the last `samples` of the output until the next segment's head arrives; the
        overlap is min(samples, output so far, next segment), so whole and streamed joins are identical.
        """
        if self.method == "none":
            for chunks in segments:
                yield from chunks
            return
        held = np.zeros(0, dtype=np.float32)
        for index, chunks in enumerate(segments):
            if index and self.method == "silence":
                yield np.zeros(self.samples, dtype=np.float32)
            chunk_iter = iter(chunks)
            if self.method == "crossfade" and len(held):
                chunk_iter = itertools.chain([self._fade_into(held, chunk_iter)], chunk_iter)
            pending = np.zeros(0, dtype=np.float32)
            for chunk in chunk_iter:
                pending = np.concatenate([pending, np.asarray(chunk, dtype=np.float32)])
                keep = self.samples if self.method == "crossfade" else 0
                if len(pending) > keep:
                    yield pending[: len(pending) - keep]
                    pending = pending[len(pending) - keep:]
            held = pending
        if len(held):
            yield held

    @staticmethod
    def _fade_into(tail: np.ndarray, chunk_iter: Iterator[np.ndarray]) -> np.ndarray:
        """The previous segment's tail cross-faded into the head of the next (read from chunk_iter)."""
        head = np.zeros(0, dtype=np.float32)
        while len(head) < len(tail):
            chunk = next(chunk_iter, None)
            if chunk is None:
                break
            head = np.concatenate([head, np.asarray(chunk, dtype=np.float32)])
        overlap = min(len(tail), len(head))
        fade_out, fade_in = raised_cosine_fade(overlap)
        mixed = tail[len(tail) - overlap:] * fade_out + head[:overlap] * fade_in
        return np.concatenate([tail[: len(tail) - overlap], mixed, head[overlap:]]).astype(np.float32)


@dataclass
class SynthesisInfo:
    """What a non-streaming synthesis did: mode, segments, token counts, lengths and the duration outcome."""

    mode: str
    segments: list[str]
    tokens: list[int] = field(default_factory=list)             # speech tokens per segment
    segment_samples: list[int] = field(default_factory=list)    # audio samples per segment before joining
    samples: int = 0
    seconds: float = 0.0
    estimated_seconds: float = 0.0                              # natural length estimated from the text
    target_seconds: float | None = None
    duration_method: str | None = None
    join: str = "none"
    join_samples: int = 0
    emotion_mix: float | None = None


Decode = Callable[[str, "int | None"], list[int]]
Render = Callable[[list[int], "int | None"], np.ndarray]


def synthesize_segments(segments: Sequence[str], decode: Decode, render: Render, joiner: Joiner,
                        info: SynthesisInfo, target: DurationTarget | None = None,
                        frames: Callable[[Sequence[int]], list[int]] | None = None,
                        on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Decodes and renders each segment in order (one sampler, one voice), joins them, fits a duration target.

    decode(segment, exact_len) -> speech tokens; render(tokens, mel_frames or None) -> audio;
    frames(token_counts) -> mel frames per segment (needed with a target). "stretch" targets need every
    segment's natural length first, so all segments are decoded before any is rendered.
    """
    exact = target.tokens if target is not None and target.tokens is not None else (None,) * len(segments)
    planned = frames(exact) if target is not None and target.tokens is not None else None
    token_lists: list[list[int]] = []
    pieces: list[np.ndarray] = []
    for i, segment in enumerate(segments):
        token_lists.append(decode(segment, exact[i]))
        if target is None or planned is not None:
            pieces.append(render(token_lists[-1], planned[i] if planned is not None else None))
            if on_progress:
                on_progress(i + 1, len(segments))
    if target is not None and planned is None:
        stretched = frames([len(tokens) for tokens in token_lists])
        for i, tokens in enumerate(token_lists):
            pieces.append(render(tokens, stretched[i]))
            if on_progress:
                on_progress(i + 1, len(segments))
    audio = joiner.join(pieces)
    if target is not None:
        audio = fit_samples(audio, target.samples)
    info.tokens = [len(tokens) for tokens in token_lists]
    info.segment_samples = [len(piece) for piece in pieces]
    info.samples = len(audio)
    return audio

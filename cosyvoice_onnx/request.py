"""One synthesis request and its result: the inputs validated once, the randomness and the clock it owns.

Limits (each an InputError naming the value and the limit): text up to 5000 characters, an instruction up to
500, a prompt transcript up to 1000 (the official prompts are one sentence each; these leave room for long ones
while bounding the LM context a request can ask for), a seed in 0 .. 2**64-1, speed in 0.5 .. 2, and a time limit
(`max_seconds`, default the engine's 600 s) checked before every LM step and stage call.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import LLMConfig
from .duration import DURATION_METHODS
from .errors import InputError, RequestTimeout
from .frontend import PromptFeatures
from .glossary import Glossary
from .longtext import DEFAULT_JOIN_MS, SynthesisInfo, check_join
from .noise import VocoderNoise
from .progress import OnEvent, ProgressEvent
from .sampling import SAMPLER_KINDS, Sampler, make_sampler, resolve_sampler_kind
from .token2wav import Token2Wav

MAX_TEXT_CHARS = 5000
MAX_INSTRUCTION_CHARS = 500
MAX_TRANSCRIPT_CHARS = 1000
MAX_SEED = 2**64 - 1
SPEED_RANGE = (0.5, 2.0)
DEFAULT_MAX_SECONDS = 600.0
# The official schedule's largest hop; a first chunk longer than that would delay the first audio, not hasten it.
MAX_FIRST_CHUNK_TOKENS = 100
DECODE_OPTIONS = ("min_len", "max_len", "exact_len", "eos_mask_mode")


def check_text(text: Any) -> str:
    """The text a request may speak: a non-empty string of at most MAX_TEXT_CHARS characters."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("the text to speak is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}. Split it into parts.")
    return text


def _check_length(what: str, text: str | None, limit: int) -> None:
    if text is not None and not isinstance(text, str):
        raise InputError(f"the {what} must be a string, not {type(text).__name__}")
    if text and len(text) > limit:
        raise InputError(f"the {what} is {len(text)} characters; the limit is {limit}. Shorten it.")


def check_seed(seed: Any) -> int:
    """A seed every generator here takes: an integer in 0 .. MAX_SEED (not a bool, float or string)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"seed must be an integer in 0 .. 2**64-1, got {seed!r}")
    return int(seed)


def check_speed(value: Any, stream: bool) -> float:
    """A speed ratio in SPEED_RANGE; only 1 when streaming (the official model changes speed only on whole clips)."""
    speed = check_number("speed", value)
    if stream and speed != 1.0:
        raise InputError("speed change works only without streaming (as in the official model)")
    if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        raise InputError(f"speed {speed} is outside {SPEED_RANGE[0]} .. {SPEED_RANGE[1]}")
    return speed


def check_number(what: str, value: Any) -> float:
    """`value` as a float when it is a finite real number (not a bool or string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_first_chunk(tokens: Any, stream: bool) -> int | None:
    """`first_chunk_tokens`: None (the official schedule) or 1 .. MAX_FIRST_CHUNK_TOKENS, streaming only."""
    if tokens is None:
        return None
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) \
            or not 1 <= int(tokens) <= MAX_FIRST_CHUNK_TOKENS:
        raise InputError(f"first_chunk_tokens must be an integer in 1 .. {MAX_FIRST_CHUNK_TOKENS}, got {tokens!r}")
    if not stream:
        raise InputError("first_chunk_tokens works only when streaming")
    return int(tokens)


def check_time_limit(max_seconds: Any) -> None:
    """A request's `max_seconds`: None (the engine's default) or a positive number of seconds."""
    if max_seconds is not None and not check_number("max_seconds", max_seconds) > 0:
        raise InputError(f"max_seconds must be positive, got {max_seconds}")


@dataclass(frozen=True)
class SynthesisRequest:
    """Everything one synthesis needs besides the engine, checked when it is made.

    The voice is `voice` (PromptFeatures, e.g. a saved voice) or `prompt_wav` (a clip: path, bytes or
    (rate, samples)) with `prompt_text` (its transcript; empty or None with a clip means cross-lingual; None with
    a voice uses the voice's own transcript). `instruct` selects instruct mode; `emotion` + `mix` splice the LM
    prompt from a second clip (mixing.py). `decode_options`: min_len, max_len, exact_len, eos_mask_mode.
    `max_seconds`: the time limit (None: the engine's default). `glossary`: term -> reading fixes applied to the
    text (not to the instruction or transcript) before it is normalised and split. `first_chunk_tokens`
    (streaming): the request's first chunk after that many speech tokens instead of the official aligned first
    hop, for sooner first audio; it changes the audio near the cut (token2wav.StreamSchedule).
    """

    text: str
    voice: PromptFeatures | None = None
    prompt_wav: Any = None
    prompt_text: str | None = None
    instruct: str | None = None
    emotion: PromptFeatures | None = None
    mix: float = 1.0
    seed: int = 0
    sampler: str = "auto"
    speed: float = 1.0
    stream: bool = False
    duration: float | None = None
    duration_method: str = "tokens"
    join: str = "none"
    join_ms: float = DEFAULT_JOIN_MS
    check_tags: bool = False
    decode_options: Mapping[str, Any] = field(default_factory=dict)
    max_seconds: float | None = None
    glossary: Glossary | None = None
    first_chunk_tokens: int | None = None

    def __post_init__(self):
        check_text(self.text)
        if self.glossary is not None and not isinstance(self.glossary, Glossary):
            raise InputError(f"glossary must be a Glossary, not {type(self.glossary).__name__}")
        _check_length("instruction", self.instruct, MAX_INSTRUCTION_CHARS)
        _check_length("prompt transcript", self.prompt_text, MAX_TRANSCRIPT_CHARS)
        if self.voice is not None:
            _check_length("voice's transcript", self.voice.transcript, MAX_TRANSCRIPT_CHARS)
        if self.emotion is not None:
            _check_length("emotion clip's transcript", self.emotion.transcript, MAX_TRANSCRIPT_CHARS)
        object.__setattr__(self, "seed", check_seed(self.seed))
        speed = check_speed(self.speed, self.stream)
        object.__setattr__(self, "first_chunk_tokens", check_first_chunk(self.first_chunk_tokens, self.stream))
        if self.duration is not None:
            check_number("duration", self.duration)
            if self.stream:
                raise InputError("duration control works only without streaming")
            if speed != 1.0:
                raise InputError("give either a duration or a speed, not both")
        if self.duration_method not in DURATION_METHODS:
            raise InputError(f"unknown duration method {self.duration_method!r}; "
                             f"choose one of {', '.join(DURATION_METHODS)}")
        if self.sampler not in SAMPLER_KINDS:
            raise InputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLER_KINDS)}")
        check_join(self.join, check_number("join_ms", self.join_ms))
        check_number("mix", self.mix)  # its range is checked where the clips are mixed (mixing.py)
        unknown = sorted(set(self.decode_options) - set(DECODE_OPTIONS))
        if unknown:
            raise InputError(f"unknown decode option(s) {', '.join(unknown)}; known: {', '.join(DECODE_OPTIONS)}")
        check_time_limit(self.max_seconds)
        if self.voice is None and self.prompt_wav is None:
            raise InputError("a prompt clip (3–10 s of the voice to clone) or a saved voice is required")
        if self.voice is not None and self.prompt_wav is not None:
            raise InputError("give the voice either as a saved voice or as a prompt clip, not both")
        if self.emotion is not None and self.instruct:
            raise InputError("instruct mode has no LM speech prompt to carry an emotion clip; use either an "
                             "instruction or an emotion clip")

    @property
    def transcript(self) -> str:
        """The transcript that prompts the LM: prompt_text when given, else the voice's own."""
        if self.prompt_text is not None or self.voice is None:
            return self.prompt_text or ""
        return self.voice.transcript

    def controls(self) -> dict[str, Any]:
        """The keyword controls besides text, voice and seed (what a history entry stores to replay a clip)."""
        return {"prompt_text": self.prompt_text, "instruct": self.instruct, "mix": self.mix, "sampler": self.sampler,
                "speed": self.speed, "duration": self.duration, "duration_method": self.duration_method,
                "join": self.join, "join_ms": self.join_ms, "check_tags": self.check_tags,
                "decode_options": dict(self.decode_options)}


@dataclass
class Randomness:
    """The token sampler and the vocoder noise of one request, both made from its seed.

    Built per request and passed down, so two requests on one engine never draw from each other's streams;
    CV3's fixed noise buffers stay shared (read-only) through `Token2Wav.request_noise`.
    """

    seed: int
    sampler_kind: str            # resolved: "torch", "numpy" or "greedy", never "auto"
    sampler: Sampler
    vocoder_noise: VocoderNoise

    @classmethod
    def create(cls, seed: int, sampler: str, llm: LLMConfig, token2wav: Token2Wav) -> Randomness:
        kind = resolve_sampler_kind(sampler)
        return cls(int(seed), kind, make_sampler(kind, seed, llm), token2wav.request_noise(seed))


class RequestClock:
    """The time limit, the seconds spent per stage and the progress events of one request."""

    def __init__(self, max_seconds: float, on_event: OnEvent | None = None):
        self.max_seconds = float(max_seconds)
        self.start = time.perf_counter()
        self.timings: dict[str, float] = defaultdict(float)
        self.events: list[ProgressEvent] = []
        self._on_event = on_event

    def check(self, where: str) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.max_seconds:
            raise RequestTimeout(f"the request ran past its {self.max_seconds:g} s limit ({elapsed:.1f} s, at the "
                                 f"{where}); shorten the text or allow more time (max_seconds)")

    def emit(self, event: ProgressEvent) -> None:
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)

    def timed(self, stage: str, target):
        """`target` with every method call checked against the limit first and its time added to `stage`."""
        return _Timed(target, self, stage)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class _Timed:
    def __init__(self, target, clock: RequestClock, stage: str):
        self._target, self._clock, self._stage = target, clock, stage

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        if not callable(value):
            return value
        clock, stage = self._clock, self._stage

        def call(*args, **kwargs):
            clock.check(stage)
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                clock.timings[stage] += time.perf_counter() - start
        return call


@dataclass
class SynthesisResult:
    """What one request made, and everything needed to make it again (plan, seed, resolved sampler)."""

    audio: np.ndarray
    sample_rate: int
    mode: str
    sampler: str                 # the sampler actually used: "torch", "numpy" or "greedy"
    plan: str                    # the engine's ExecutionPlan in its canonical spelling
    seed: int
    info: SynthesisInfo          # segments, speech tokens and samples per segment, duration outcome
    timings: dict[str, float] = field(default_factory=dict)   # seconds: prompt, lm, flow, vocoder, total
    events: list[ProgressEvent] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


class SynthesisStream:
    """The chunks of a streaming request; `result` (a SynthesisResult) is there once every chunk was taken."""

    def __init__(self, chunks: Iterator[np.ndarray], finish: Callable[[list[np.ndarray]], SynthesisResult]):
        self._chunks = chunks
        self._finish = finish
        self._taken: list[np.ndarray] = []
        self._result: SynthesisResult | None = None

    def __iter__(self) -> SynthesisStream:
        return self

    def __next__(self) -> np.ndarray:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            if self._result is None:
                self._result = self._finish(self._taken)
            raise
        self._taken.append(chunk)
        return chunk

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    @property
    def result(self) -> SynthesisResult:
        if self._result is None:
            raise InputError("the stream has not finished yet: take every chunk first")
        return self._result

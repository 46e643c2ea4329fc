"""Voice conversion: a recording re-spoken in another voice, without the language model.

As in the official `inference_vc`, the source's speech tokens (the same speech-tokenizer extraction as for prompt
clips) are the flow's target tokens; the flow gets the target voice's prompt tokens, prompt mel and speaker
embedding, then the vocoder makes the audio. A prompt clip is used untrimmed (the official vc frontend skips the
2:1 token/mel alignment of the other modes), so the output has (ratio * (prompt tokens + source tokens) - prompt
mel frames) mel frames; with a saved voice (aligned when saved) that is exactly ratio * source tokens.

Limits: a source from MIN_SOURCE_SECONDS to MAX_SOURCE_SECONDS. The speech tokenizer takes at most 30 s at once, so
a longer source is cut at its quietest moments into segments of at most MAX_SEGMENT_SECONDS, each converted on its
own and the audio concatenated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import audio
from .errors import InputError
from .frontend import MAX_PROMPT_SECONDS, SPEECH_TOKENIZER_RATE, Frontend, PromptFeatures
from .longtext import SynthesisInfo
from .noise import VocoderNoise
from .progress import ProgressEvent
from .prompts import MODES
from .request import RequestClock, check_seed, check_speed, check_time_limit
from .token2wav import Token2Wav

MIN_SOURCE_SECONDS = 0.5
MAX_SEGMENT_SECONDS = MAX_PROMPT_SECONDS    # the speech tokenizer refuses longer input
MAX_SOURCE_SECONDS = 300.0                  # 10 segments; bounds the work one request can ask for
PAUSE_FRAME_SECONDS = 0.02                  # energy frames for finding pauses
PAUSE_SMOOTH_FRAMES = 10                    # a pause is a quiet 200 ms, not one quiet frame between syllables
VC = MODES["vc"]


@dataclass(frozen=True)
class ConversionRequest:
    """One conversion: the source recording (path, bytes or (rate, samples)) and the target voice, given as a
    saved voice (`voice`) or a prompt clip (`prompt_wav`). `seed` draws CosyVoice2's vocoder noise (CosyVoice3's
    is fixed); `speed` (0.5 .. 2, not streaming) resamples the mel as in synthesis and the official vc call;
    `max_seconds` is the time limit (None: the engine's default)."""

    source_wav: Any
    voice: PromptFeatures | None = None
    prompt_wav: Any = None
    seed: int = 0
    stream: bool = False
    max_seconds: float | None = None
    speed: float = 1.0

    def __post_init__(self):
        if self.source_wav is None:
            raise InputError("voice conversion needs a source recording (the speech to re-speak)")
        if self.voice is None and self.prompt_wav is None:
            raise InputError("voice conversion needs a target voice: a saved voice or a prompt clip of it")
        if self.voice is not None and self.prompt_wav is not None:
            raise InputError("give the target voice either as a saved voice or as a prompt clip, not both")
        object.__setattr__(self, "seed", check_seed(self.seed))
        check_speed(self.speed, self.stream)
        check_time_limit(self.max_seconds)


def load_source(source, rate: int = SPEECH_TOKENIZER_RATE) -> np.ndarray:
    """The source recording as mono float32 at the speech tokenizer's rate, checked: readable, finite, audible,
    MIN_SOURCE_SECONDS .. MAX_SOURCE_SECONDS long."""
    wav = audio.load_audio(source, rate)
    audio.check_prompt_audio(wav, rate, min_seconds=MIN_SOURCE_SECONDS, max_seconds=MAX_SOURCE_SECONDS,
                             what="source audio", limit="the voice-conversion limit; split the recording")
    return wav


def split_at_pauses(wav: np.ndarray, rate: int, max_seconds: float = MAX_SEGMENT_SECONDS,
                    min_seconds: float = MIN_SOURCE_SECONDS) -> list[tuple[int, int]]:
    """(start, end) sample ranges covering `wav`, each at most max_seconds long, cut at the quietest 200 ms in the
    second half of the allowed length; no piece is shorter than min_seconds."""
    total, longest = len(wav), int(max_seconds * rate)
    if total <= longest:
        return [(0, total)]
    frame = max(int(PAUSE_FRAME_SECONDS * rate), 1)
    frames = total // frame
    energy = np.sqrt(np.mean(np.square(wav[:frames * frame].reshape(frames, frame), dtype=np.float64), axis=1))
    smooth = np.convolve(energy, np.ones(PAUSE_SMOOTH_FRAMES) / PAUSE_SMOOTH_FRAMES, mode="same")
    ranges, start, shortest = [], 0, int(min_seconds * rate)
    while total - start > longest:
        low = -(-(start + longest // 2) // frame)
        high = min(start + longest, total - shortest) // frame
        cut = (low + int(np.argmin(smooth[low:high]))) * frame if high > low else start + longest
        ranges.append((start, cut))
        start = cut
    ranges.append((start, total))
    return ranges


class Conversion:
    """One conversion in flight: the source's token segments, the target prompt, the noise and the clock."""

    def __init__(self, frontend: Frontend, token2wav: Token2Wav, request: ConversionRequest, clock: RequestClock):
        self.request, self.clock, self.token2wav = request, clock, token2wav
        timed_frontend = clock.timed("prompt", frontend)
        if request.voice is not None:
            self.prompt = request.voice
        else:
            self.prompt = timed_frontend.extract_prompt(request.prompt_wav, trim=VC.trim_prompt)
        wav = load_source(request.source_wav)
        self.ranges = split_at_pauses(wav, SPEECH_TOKENIZER_RATE)
        tokenize = clock.timed("source", frontend).speech_tokens
        self.tokens = [tokenize(wav[start:end]).reshape(-1) for start, end in self.ranges]
        self.noise: VocoderNoise = token2wav.request_noise(request.seed)
        self.info = SynthesisInfo(VC.name, [f"{s / SPEECH_TOKENIZER_RATE:.2f}-{e / SPEECH_TOKENIZER_RATE:.2f} s"
                                         for s, e in self.ranges],
                                  estimated_seconds=len(wav) / SPEECH_TOKENIZER_RATE)

    def chunks(self) -> Iterator[np.ndarray]:
        """The audio, segment by segment: one piece per segment, or the streaming chunks of each."""
        prompt = self.prompt
        for index, tokens in enumerate(self.tokens):
            samples = 0
            if self.request.stream:
                pieces = self.token2wav.stream(iter(tokens.tolist()), prompt.speech_tokens, prompt.mel,
                                               prompt.embedding, noise=self.noise)
            else:
                pieces = iter([self.token2wav.whole(tokens, prompt.speech_tokens, prompt.mel, prompt.embedding,
                                                    speed=self.request.speed, noise=self.noise)])
            for piece in pieces:
                samples += len(piece)
                yield piece
            self.info.tokens.append(len(tokens))
            self.info.segment_samples.append(samples)
            done, total = index + 1, len(self.tokens)
            self.clock.emit(ProgressEvent("segment", done, total,
                                          f"segment {done} of {total} ({self.info.segments[index]}) converted"))

"""Exact-duration control: the natural-length estimate, per-segment token and mel-frame budgets, the final fit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .errors import InputError
from .token2wav import Token2Wav, interpolate_linear

# Natural pace: CV3 speaks about 3.5 Qwen text tokens per second in both Chinese and English, at 25 speech
# tokens per second, i.e. ~7 speech tokens per text token (the LM's own bounds are 2x .. 20x).
SPEECH_TOKENS_PER_TEXT_TOKEN = 7.0
# A target outside these multiples of the estimate is refused rather than rendered as mush or drawl.
DURATION_RANGE = (0.3, 3.0)
# "tokens": the LM produces exactly the budget (EOS masked before it, forced at it); "stretch": the LM speaks at
# its natural pace and the mel is linearly resampled to the target (the official `speed` mechanism).
DURATION_METHODS = ("tokens", "stretch")
STRETCH_RANGE = (0.5, 2.0)


def estimate_tokens(text_token_counts: Sequence[int]) -> float:
    """Natural number of speech tokens for texts of these text-token counts."""
    return SPEECH_TOKENS_PER_TEXT_TOKEN * float(sum(text_token_counts))


def split_proportionally(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """Integers >= minimum, proportional to weights, summing to exactly `total` (largest-remainder rounding)."""
    count = len(weights)
    if count == 0:
        return []
    if total < minimum * count:
        raise InputError(f"cannot split {total} into {count} parts of at least {minimum}")
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights if weights.sum() > 0 else np.ones(count)
    spare = total - minimum * count
    shares = spare * weights / weights.sum()
    parts = np.floor(shares).astype(np.int64)
    # Ties go to the earlier segment (stable sort), so the split is deterministic.
    for i in np.argsort(-(shares - parts), kind="stable")[: spare - int(parts.sum())]:
        parts[i] += 1
    return [int(p) + minimum for p in parts]


@dataclass(frozen=True)
class DurationTarget:
    """What an exact-duration request asks of each segment; `samples` is the exact output length."""

    seconds: float
    method: str
    samples: int
    speech_samples: int                  # samples left for speech after the joins add or remove theirs
    tokens: tuple[int, ...] | None       # per-segment speech tokens ("tokens" method)
    estimated_seconds: float

    @classmethod
    def plan(cls, seconds: float, method: str, text_token_counts: Sequence[int], join_samples: int,
             cfg: ModelConfig) -> "DurationTarget":
        """Validates the target against the text and splits the token budget over the segments.

        join_samples: net samples the segment joins add (silence) or remove (cross-fades).
        """
        if method not in DURATION_METHODS:
            raise InputError(f"unknown duration method {method!r}; choose one of {', '.join(DURATION_METHODS)}")
        seconds = float(seconds)
        if not np.isfinite(seconds) or seconds <= 0:
            raise InputError(f"duration must be a positive number of seconds, got {seconds}")
        rate = cfg.features.token_frame_rate
        estimated = estimate_tokens(text_token_counts) / rate
        low, high = DURATION_RANGE[0] * estimated, DURATION_RANGE[1] * estimated
        if not low <= seconds <= high:
            raise InputError(
                f"duration {seconds:.2f} s is outside the range this text can be spoken in: {low:.2f} .. "
                f"{high:.2f} s ({DURATION_RANGE[0]}x .. {DURATION_RANGE[1]}x of its natural length of about "
                f"{estimated:.2f} s); change the duration or the text")
        sample_rate = cfg.hift.sampling_rate
        samples = round(seconds * sample_rate)
        speech_samples = samples - join_samples
        budget = round(speech_samples / sample_rate * rate)
        if budget < len(text_token_counts):
            raise InputError(f"duration {seconds:.2f} s leaves too little speech for "
                             f"{len(text_token_counts)} segments after the joins; shorten join_ms")
        tokens = tuple(split_proportionally(budget, text_token_counts, minimum=1)) if method == "tokens" else None
        return cls(seconds, method, samples, speech_samples, tokens, estimated)

    def frames(self, token_counts: Sequence[int], cfg: ModelConfig) -> list[int]:
        """Mel frames per segment: enough frames for the speech samples (the surplus, under one frame, is trimmed
        at the end), split in proportion to the segments' tokens."""
        total = -(-self.speech_samples // cfg.hift.hop_samples)
        frames = split_proportionally(total, token_counts, minimum=1)
        if self.method == "stretch":
            ratio = 2 * sum(token_counts) / max(total, 1) if sum(token_counts) else 0.0
            if not STRETCH_RANGE[0] <= ratio <= STRETCH_RANGE[1]:
                raise InputError(
                    f"stretching the natural {sum(token_counts) / cfg.features.token_frame_rate:.2f} s of speech "
                    f"to {self.seconds:.2f} s is a speed of {ratio:.2f}, outside {STRETCH_RANGE[0]} .. "
                    f"{STRETCH_RANGE[1]}; use method='tokens' or another duration")
        return frames


def fit_frames(mel: np.ndarray, frames: int) -> np.ndarray:
    """[1, 80, T] mel resampled to exactly `frames` frames (untouched when it already has them)."""
    return mel if mel.shape[2] == frames else interpolate_linear(mel, frames)


def render_frames(token2wav: Token2Wav, tokens: Sequence[int], prompt_tokens: np.ndarray, prompt_mel: np.ndarray,
                  embedding: np.ndarray, frames: int, noise=None) -> np.ndarray:
    """Non-streaming flow + vocoder with the mel fitted to `frames` frames: exactly frames * hop samples.
    `noise`: the request's vocoder noise (Token2Wav.request_noise)."""
    mel = token2wav.mel(np.asarray(tokens, dtype=np.int64), prompt_tokens, prompt_mel, embedding,
                        streaming=False, finalize=True)
    return token2wav.vocode(fit_frames(mel, frames), finalize=True, noise=noise)[0]


def fit_samples(audio: np.ndarray, samples: int) -> np.ndarray:
    """Trims the end or pads it with silence to exactly `samples` samples."""
    if len(audio) >= samples:
        return audio[:samples]
    return np.concatenate([audio, np.zeros(samples - len(audio), dtype=audio.dtype)])

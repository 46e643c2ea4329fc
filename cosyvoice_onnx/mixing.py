"""Emotion/timbre mixing: the LM prompt (prosody, emotion) spliced from two clips, the flow prompt from one."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .frontend import PromptFeatures
from .prompts import END_OF_PROMPT


@dataclass(frozen=True)
class PromptPlan:
    """What the LM continues from, and what the flow and vocoder render with."""

    lm_tokens: np.ndarray     # int64 [n] LM prompt speech tokens
    transcript: str           # their transcript; empty means no LM speech prompt (cross-lingual)
    flow: PromptFeatures      # flow prompt tokens, prompt mel and CAM++ embedding (the timbre)


def single_prompt(voice: PromptFeatures, transcript: str | None = None) -> PromptPlan:
    """The official single-clip plan: the same clip prompts the LM and the flow."""
    text = voice.transcript if transcript is None else transcript
    return PromptPlan(voice.speech_tokens.reshape(-1).astype(np.int64), text or "", voice)


def _split_system_prefix(transcript: str) -> tuple[str, str]:
    """('You are a helpful assistant.<|endofprompt|>', 'spoken words') for an already formatted transcript."""
    head, marker, body = transcript.rpartition(END_OF_PROMPT)
    return (head + marker, body) if marker else ("", transcript)


def _is_word_boundary(text: str, position: int) -> bool:
    if position in (0, len(text)):
        return True
    before, after = text[position - 1], text[position]
    # Characters of scripts written without spaces (Han, kana, ...) are words of their own.
    wide = unicodedata.east_asian_width(before) in "WF" or unicodedata.east_asian_width(after) in "WF"
    return before.isspace() or unicodedata.category(before).startswith("P") or wide


def head_cut(text: str, fraction: float) -> int:
    """Index of the word boundary nearest to `fraction` of the text (ties go to the earlier one)."""
    target = fraction * len(text)
    return min((i for i in range(len(text) + 1) if _is_word_boundary(text, i)), key=lambda i: (abs(i - target), i))


def _head(clip: PromptFeatures, transcript: str, fraction: float) -> tuple[int, int]:
    """(tokens, characters) in the first `fraction` of a clip, cut at a word boundary of its transcript.

    Speech tokens are assumed to run at a constant rate per transcript character: a transcript cut at c of
    L characters cuts the n tokens at round(n * c / L).
    """
    n = clip.speech_tokens.size
    if not transcript:
        return round(n * fraction), 0
    chars = head_cut(transcript, fraction)
    return round(n * chars / len(transcript)), chars


def _joined(left: str, right: str) -> str:
    if left and right and left[-1].isascii() and left[-1].isalnum() and right[0].isascii() and right[0].isalnum():
        return f"{left} {right}"
    return left + right


def mix_prompts(timbre: PromptFeatures, emotion: PromptFeatures, weight: float,
                timbre_transcript: str | None = None) -> PromptPlan:
    """The LM prompt spliced from the head of the timbre clip A and the tail of the emotion clip B.

    With c = 1 - weight, both clips are cut at the word boundary nearest c of their transcripts (tokens cut
    proportionally); the LM prompt is A's head followed by B's tail, tokens and transcript alike, so the LM
    continues from B's delivery in proportion to `weight`. The flow prompt, prompt mel and CAM++ embedding
    are always A's. weight 0 is exactly A's single-clip prompt; weight 1 is B's LM prompt with A's timbre;
    mixing a clip with itself gives its single-clip prompt at any weight.
    """
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"mix must be between 0 (all timbre clip) and 1 (all emotion clip), got {weight}")
    a_prefix, a_body = _split_system_prefix(timbre.transcript if timbre_transcript is None else timbre_transcript)
    b_prefix, b_body = _split_system_prefix(emotion.transcript)
    if weight > 0 and not b_body.strip():
        raise InputError("mixing needs the transcript of the emotion clip (its speech tokens prompt the LM)")
    if 0 < weight < 1 and not a_body.strip():
        raise InputError("a mix between 0 and 1 needs the transcript of the timbre clip too, or use mix=1")
    keep = 1.0 - weight
    a_tokens, a_chars = _head(timbre, a_body, keep)
    b_tokens, b_chars = _head(emotion, b_body, keep)
    body = _joined(a_body[:a_chars], b_body[b_chars:])
    prefix = a_prefix if weight == 0 or a_chars else b_prefix
    tokens = np.concatenate([timbre.speech_tokens.reshape(-1)[:a_tokens],
                             emotion.speech_tokens.reshape(-1)[b_tokens:]]).astype(np.int64)
    return PromptPlan(tokens, prefix + body, timbre)

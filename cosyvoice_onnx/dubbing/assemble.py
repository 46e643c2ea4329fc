"""The assembled track: subtitle cues mixed in at their timestamps, or chapters one after another."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..longtext import Joiner

CHAPTER_PAUSE_SECONDS = 1.5
MAX_TRACK_SECONDS = 6 * 3600      # a job's track is held in memory: 6 h at 24 kHz float32 is ~2 GB


def timed_track(cues: Sequence[tuple[float, np.ndarray]], sample_rate: int, length_seconds: float) -> np.ndarray:
    """Each (start seconds, audio) added in at its start; the track lasts to the later of `length_seconds`
    (the last cue's end) and the end of the last audio. Overlaps (overlapping or overrunning cues) are summed
    and the sum clipped to [-1, 1]."""
    ends = [round(start * sample_rate) + len(audio) for start, audio in cues]
    samples = max([round(length_seconds * sample_rate), *ends])
    check_track_seconds(samples / sample_rate)
    track = np.zeros(samples, dtype=np.float32)
    for start, audio in cues:
        at = round(start * sample_rate)
        track[at:at + len(audio)] += audio
    return np.clip(track, -1.0, 1.0)


def chapter_track(chapters: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    """Chapters in order with CHAPTER_PAUSE_SECONDS of silence between them (the long-text silence join)."""
    return Joiner.create("silence", CHAPTER_PAUSE_SECONDS * 1000, sample_rate).join(chapters)


def check_track_seconds(seconds: float) -> None:
    """Refuses a track longer than MAX_TRACK_SECONDS (checked before its pieces are read into memory)."""
    if seconds > MAX_TRACK_SECONDS:
        raise InputError(f"the track would be {seconds / 3600:.1f} h; at most {MAX_TRACK_SECONDS / 3600:g} h is "
                         "assembled")

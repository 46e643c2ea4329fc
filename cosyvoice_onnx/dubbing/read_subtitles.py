"""SRT and WebVTT input: one item per cue with its slot; reversed and 0 s cues refused, overlaps noted.

A cue's speaker is the `<v NAME>` voice tag (WebVTT) or a leading `NAME:` (both formats); the job's voice map
decides whether it picks a voice (an unmapped `NAME:` stays part of the text, so "Note: ..." is read as written).
"""

from __future__ import annotations

import re

from ..errors import InputError
from .assemble import MAX_TRACK_SECONDS
from .items import BatchItem, ParsedInput, Problem

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})"
TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")
VOICE_TAG = re.compile(r"<v(?:\.[^\s>]+)?\s+([^>]+)>")
SPEAKER_PREFIX = re.compile(r"^\s*([^\W\d_][\w .'\-]{0,31}):\s+(?=\S)")
TAGS = re.compile(r"<[^>]*>|\{\\[^}]*\}")
VTT_SKIP = ("NOTE", "STYLE", "REGION")


def seconds_of(groups) -> float:
    hours, minutes, seconds, fraction = groups
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction.ljust(3, "0")) / 1000


def format_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _blocks(text: str):
    """(first line number, lines) of each block of non-blank lines."""
    block, start = [], 0
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def read_srt(text: str) -> ParsedInput:
    return _read(text, ParsedInput("srt"), vtt=False)


def read_vtt(text: str) -> ParsedInput:
    if not text.lstrip("\ufeff").startswith("WEBVTT"):
        raise InputError("a WebVTT file starts with the line WEBVTT")
    return _read(text, ParsedInput("vtt"), vtt=True)


def _read(text: str, parsed: ParsedInput, vtt: bool) -> ParsedInput:
    count = 0
    previous: BatchItem | None = None    # the accepted cue that ends last so far
    for start_line, lines in _blocks(text):
        if vtt and (lines[0].startswith("WEBVTT") or lines[0].split(" ")[0] in VTT_SKIP):
            continue
        timing = next((i for i, line in enumerate(lines[:2]) if TIMING.match(line)), None)
        count += 1
        name = f"cue-{count:04d}"
        if timing is None:
            parsed.problems.append(Problem(start_line, f"cue {count} has no timing line like 00:00:01,000 --> "
                                                       "00:00:02,500", name=name))
            continue
        match = TIMING.match(lines[timing])
        start, end = seconds_of(match.groups()[:4]), seconds_of(match.groups()[4:])
        line = start_line + timing
        if end < start:
            parsed.problems.append(Problem(line, f"cue {count} ends ({format_time(end)}) before it starts "
                                                 f"({format_time(start)})", name=name))
            continue
        if end > MAX_TRACK_SECONDS:
            parsed.problems.append(Problem(line, f"cue {count} ends at {format_time(end)}, past the "
                                                 f"{MAX_TRACK_SECONDS / 3600:g} h a track may last", name=name))
            continue
        if end == start:
            parsed.problems.append(Problem(line, f"cue {count} is 0 s long ({format_time(start)})", name=name))
            continue
        raw = " ".join(lines[timing + 1:])
        voice_tag = VOICE_TAG.search(raw)
        spoken = " ".join(TAGS.sub("", raw).split())
        if not spoken:
            parsed.problems.append(Problem(line, f"cue {count} has no text", name=name))
            continue
        prefix = SPEAKER_PREFIX.match(spoken)
        speaker = voice_tag.group(1).strip() if voice_tag else prefix.group(1).strip() if prefix else None
        item = BatchItem(line=line, name=name, text=spoken, speaker=speaker, start=start, end=end)
        if previous is not None and start < previous.end:
            parsed.problems.append(Problem(line, f"cue {count} starts {previous.end - start:.3f} s before "
                                                 f"{previous.name} ends; both are kept and overlap in the track",
                                           name=name, fatal=False))
        parsed.items.append(item)
        if previous is None or end > previous.end:
            previous = item
    return parsed


def without_speaker(text: str, speaker: str) -> str:
    """The cue's text without its leading `speaker:` (unchanged when it has none, e.g. a `<v>` tag's cue)."""
    prefix = SPEAKER_PREFIX.match(text)
    return text[prefix.end():] if prefix and prefix.group(1).strip() == speaker else text

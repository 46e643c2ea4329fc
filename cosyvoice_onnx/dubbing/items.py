"""What a batch job is made of: the items read from the input (BatchItem), the lines that could not be read
(Problem), and the checked output name of each item."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from ..voices import validate_name

MAX_NAME_DEPTH = 4


@dataclass(frozen=True)
class BatchItem:
    """One thing to speak, as the input gave it (before the job's defaults fill the gaps).

    `line`: where it starts in the input (1-based), for messages. `name`: the output file stem, a relative
    path checked by `check_output_name`. `start`/`end`: the cue's slot in seconds (subtitles; None otherwise).
    `speaker`: the speaker the cue names (`NAME:` or `<v NAME>`), mapped to a voice by the job's voice map.
    Every other field left None takes the job's default.
    """

    line: int
    name: str
    text: str
    voice: str | None = None
    speaker: str | None = None
    prompt_wav: str | None = None
    prompt_text: str | None = None
    mode: str | None = None
    instruct: str | None = None
    seed: int | None = None
    speed: float | None = None
    duration: float | None = None
    duration_method: str | None = None
    start: float | None = None
    end: float | None = None

    @property
    def timed(self) -> bool:
        return self.start is not None and self.end is not None


@dataclass(frozen=True)
class Problem:
    """An input line (or cue) that became no item, or a note about one that did: `line` and a one-line reason.
    `fatal` problems are items that fail (they appear in the manifest with the reason); others are warnings."""

    line: int
    reason: str
    name: str = ""
    fatal: bool = True

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ParsedInput:
    """A read input file: its kind (jsonl, srt, vtt, text), its items in order, and what could not be read."""

    kind: str
    items: list[BatchItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def timed(self) -> bool:
        return self.kind in ("srt", "vtt")


def check_output_name(name: str) -> str:
    """A relative output name that stays inside the output folder: '/'-separated parts of letters, digits,
    spaces, '-', '_' and '.', each starting with a letter or digit (so no '..', no absolute path, no drive)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError("the output name is empty")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or ":" in name:
        raise InputError(f"output name {name!r} would leave the output folder; use a plain name like 'intro-01'")
    if len(parts) > MAX_NAME_DEPTH or not all(_usable_part(p) for p in parts):
        raise InputError(f"output name {name!r} is not usable: use up to {MAX_NAME_DEPTH} '/'-separated parts of "
                         "letters, digits, spaces, '-', '_' or '.', each starting with a letter or digit, no reserved names like CON")
    return "/".join(parts)


def _usable_part(part: str) -> bool:
    """One path component follows the saved voices' file-name rules (portable, no reserved device names)."""
    try:
        validate_name(part)
    except InputError:
        return False
    return True

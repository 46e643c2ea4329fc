"""A job: the engine to load, the job's defaults, and each input item made self-contained (JobItem: its text,
voice reference, seed, controls, slot and a key over everything that shapes its audio)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..duration import DURATION_METHODS
from ..errors import InputError
from ..glossary import Glossary
from ..hash_cache import file_sha256
from ..longtext import DEFAULT_JOIN_MS, check_join
from ..plan import ExecutionPlan
from ..request import check_seed
from ..voices import VoiceStore, validate_name
from .fitting import RULE as FIT_RULE
from .items import ParsedInput, Problem
from .read_subtitles import without_speaker

KEY_VERSION = 1
ITEMS_DIR = "items"


def parse_voice_map(entries: list[str]) -> dict[str, str]:
    """`SPEAKER=VOICE` pairs (repeatable, or comma-separated) -> {speaker: saved voice name}."""
    mapping: dict[str, str] = {}
    for entry in entries:
        for pair in filter(str.strip, entry.split(",")):
            speaker, sep, voice = pair.partition("=")
            if not sep or not speaker.strip() or not voice.strip():
                raise InputError(f"--voice-map {pair!r}: write SPEAKER=VOICE, e.g. ALICE=anna")
            if speaker.strip().casefold() in {s.casefold() for s in mapping}:
                raise InputError(f"--voice-map names speaker {speaker.strip()!r} twice")
            mapping[speaker.strip()] = validate_name(voice.strip())
    return mapping


@dataclass(frozen=True)
class EngineSpec:
    """What every worker loads: a model folder (a path each worker sees) and an execution plan spec."""

    model_dir: str
    backend: str = "torch"
    device: str = "auto"
    llm_variant: str = "base"

    def __post_init__(self):
        object.__setattr__(self, "model_dir", str(Path(self.model_dir).expanduser().resolve()))
        object.__setattr__(self, "backend", str(ExecutionPlan.parse(self.backend, device=self.device)))

    def load(self):
        from ..engine import CosyVoice

        return CosyVoice(self.model_dir, backend=self.backend, device=self.device, llm_variant=self.llm_variant)

    def identity(self) -> str:
        return f"{self.model_dir}|{self.backend}|{self.llm_variant}"


@dataclass(frozen=True)
class VoiceRef:
    """A saved voice (`name` in `voices_dir`) or a prompt clip (`clip` path with its `transcript`; None or ''
    means cross-lingual). `digest` identifies the voice's content, so a re-saved voice makes a new key."""

    name: str | None = None
    voices_dir: str | None = None
    clip: str | None = None
    transcript: str | None = None
    digest: str = ""

    @property
    def label(self) -> str:
        return self.name or Path(self.clip or "").name


@dataclass(frozen=True)
class JobSettings:
    """The job's defaults (every field an input line may override) and where voices come from."""

    engine: EngineSpec
    voices_dir: str
    voice: str | None = None
    prompt_wav: str | None = None
    prompt_text: str | None = None
    voice_map: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    join: str = "none"
    join_ms: float = DEFAULT_JOIN_MS
    duration_method: str = "tokens"
    glossary: Glossary | None = None
    base_dir: str | None = None          # JSONL prompt_wav paths are relative to it (the input's folder)

    def __post_init__(self):
        check_seed(self.seed)
        check_join(self.join, self.join_ms)
        if self.duration_method not in DURATION_METHODS:
            raise InputError(f"unknown duration method {self.duration_method!r}")
        if self.voice and self.prompt_wav:
            raise InputError("give either --voice or --prompt-wav, not both")
        known = VoiceStore(self.voices_dir).names()
        for speaker, voice in {"--voice": self.voice, **self.voice_map}.items():
            if voice and voice not in known:
                raise InputError(f"unknown voice {voice!r} ({speaker}); saved voices: {', '.join(known) or 'none'}"
                                 f" in {self.voices_dir}")


@dataclass(frozen=True)
class JobItem:
    """One item ready to synthesize anywhere the engine and voice files are: nothing refers back to the job."""

    name: str
    line: int
    text: str
    voice: VoiceRef
    seed: int
    key: str = ""
    mode: str | None = None
    instruct: str | None = None
    speed: float = 1.0
    duration: float | None = None
    duration_method: str = "tokens"
    join: str = "none"
    join_ms: float = DEFAULT_JOIN_MS
    start: float | None = None
    end: float | None = None
    speaker: str | None = None
    glossary: Glossary | None = None

    @property
    def file(self) -> str:
        """The item's audio, relative to the output folder."""
        return f"{ITEMS_DIR}/{self.name}.wav"

    @property
    def timed(self) -> bool:
        return self.start is not None and self.end is not None


@dataclass
class Job:
    kind: str
    engine: EngineSpec
    items: list[JobItem]
    problems: list[Problem]


def plan_job(parsed: ParsedInput, settings: JobSettings) -> Job:
    """The parsed input's items with the job's defaults applied, voices resolved and keys computed; an item
    that cannot run (unknown voice, missing clip, a name used twice) becomes a Problem and the rest go on."""
    store = VoiceStore(settings.voices_dir)
    known = set(store.names())
    voice_map = {speaker.casefold(): voice for speaker, voice in settings.voice_map.items()}
    digests: dict[str, str] = {}
    # Names compared without case: 'Intro' and 'intro' are one file on Windows and macOS.
    items, problems = [], list(parsed.problems)
    names = {p.name.casefold(): p.line for p in parsed.problems if p.fatal}
    for item in parsed.items:
        try:
            if item.name.casefold() in names:
                raise InputError(f"output name {item.name!r} is used by line {names[item.name.casefold()]} already")
            names[item.name.casefold()] = item.line
            text, voice = item.text, None
            if item.speaker and item.speaker.casefold() in voice_map:
                text, voice = without_speaker(item.text, item.speaker), voice_map[item.speaker.casefold()]
            elif item.speaker and voice_map:
                problems.append(Problem(item.line, f"speaker {item.speaker!r} is not in the voice map; the default "
                                                   "voice speaks it", item.name, fatal=False))
            voice_ref = _voice(item.voice or voice, item.prompt_wav, item.prompt_text, settings, known, digests)
            job_item = JobItem(
                name=item.name, line=item.line, text=text, voice=voice_ref,
                seed=settings.seed if item.seed is None else item.seed, mode=item.mode, instruct=item.instruct,
                speed=1.0 if item.speed is None else item.speed, duration=item.duration,
                duration_method=item.duration_method or settings.duration_method, join=settings.join,
                join_ms=settings.join_ms, start=item.start, end=item.end, speaker=item.speaker,
                glossary=settings.glossary)
            items.append(replace(job_item, key=item_key(job_item, settings.engine)))
        except InputError as exc:
            problems.append(Problem(item.line, str(exc), item.name))
    problems.sort(key=lambda p: p.line)
    return Job(parsed.kind, settings.engine, items, problems)


def _voice(name, clip, transcript, settings: JobSettings, known: set[str], digests: dict[str, str]) -> VoiceRef:
    if name is None and clip is None:
        name, clip = settings.voice, settings.prompt_wav
        transcript = settings.prompt_text if transcript is None else transcript
        if name is None and clip is None:
            raise InputError("no voice: give --voice or --prompt-wav (or a voice in the line)")
    if name is not None:
        validate_name(name)
        if name not in known:
            raise InputError(f"unknown voice {name!r}; saved voices: {', '.join(sorted(known)) or 'none'}")
        root = Path(settings.voices_dir)
        files = [root / f"{name}.npz", root / f"{name}.json"]
        return VoiceRef(name=name, voices_dir=str(root), transcript=transcript, digest=_digest(files, digests))
    path = Path(clip).expanduser()
    if not path.is_absolute() and settings.base_dir:
        path = Path(settings.base_dir) / path
    if not path.is_file():
        raise InputError(f"prompt clip {clip} not found")
    return VoiceRef(clip=str(path.resolve()), transcript=transcript, digest=_digest([path], digests))


def _digest(paths: list[Path], cache: dict[str, str]) -> str:
    key = "|".join(str(p) for p in paths)
    if key not in cache:
        cache[key] = hashlib.sha256("".join(file_sha256(path) for path in paths).encode()).hexdigest()
    return cache[key]


def item_key(item: JobItem, engine: EngineSpec) -> str:
    """sha256 over everything that shapes the item's audio (not its name or position): a rerun skips an item
    whose key and file are unchanged."""
    slot = round(item.end - item.start, 3) if item.timed else None
    fields = {"v": KEY_VERSION, "engine": engine.identity(), "text": item.text, "voice": item.voice.digest,
              "transcript": item.voice.transcript, "seed": item.seed, "mode": item.mode, "instruct": item.instruct,
              "speed": item.speed, "duration": item.duration, "method": item.duration_method, "join": item.join,
              "join_ms": item.join_ms, "slot": slot, "fit": FIT_RULE if slot is not None else None,
              "glossary": item.glossary.to_csv() if item.glossary is not None else None}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]

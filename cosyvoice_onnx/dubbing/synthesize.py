"""One item -> its audio: the pure step every executor runs (locally or on a Ray actor), never raising for a
bad item. Writing files is the runner's business, so a remote worker needs no access to the output folder."""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import CosyVoiceError, InputError, one_line
from ..longtext import Joiner
from ..prompts import choose_mode
from ..request import MAX_TEXT_CHARS, SynthesisRequest
from .fitting import fit_cue, natural_seconds
from .job import JobItem, VoiceRef

VOICE_CACHE_SIZE = 8
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*")


@dataclass
class ItemResult:
    """One manifest row: what became of an item. `status`: ok (untimed), a cue's fit (fitting.py), failed."""

    name: str
    line: int
    file: str = ""
    seconds: float = 0.0
    seed: int | None = None
    backend: str = ""
    rtf: float | None = None
    error: str = ""
    status: str = "failed"
    key: str = ""
    start: float | None = None
    end: float | None = None
    natural_seconds: float | None = None
    target_seconds: float | None = None
    speaker: str | None = None
    voice: str = ""
    resumed: bool = False


@dataclass
class ItemOutcome:
    result: ItemResult
    audio: np.ndarray | None = None       # float32 mono, None when the item failed
    sample_rate: int = 0


class VoiceCache:
    """Prompt features per voice reference, so a clip is analysed once per worker, not once per item."""

    def __init__(self, engine, size: int = VOICE_CACHE_SIZE):
        self.engine = engine
        self.size = size
        self._voices: OrderedDict[VoiceRef, object] = OrderedDict()

    def get(self, ref: VoiceRef):
        if ref not in self._voices:
            if ref.name is not None:
                self._voices[ref] = self.engine.voice_store(ref.voices_dir).load(ref.name)
            else:
                self._voices[ref] = self.engine.prompt_from_audio(ref.clip, ref.transcript or "")
            while len(self._voices) > self.size:
                self._voices.popitem(last=False)
        self._voices.move_to_end(ref)
        return self._voices[ref]


def text_parts(text: str, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """A chapter cut into requests of at most `limit` characters: at paragraphs, else at sentence ends, else
    at spaces (each part keeps the one seed and voice; the parts are joined like sentences)."""
    pieces: list[str] = []
    for paragraph in text.split("\n"):
        pieces.extend([paragraph] if len(paragraph) <= limit else
                      [s for s in _SENTENCE_END.split(paragraph) if s])
    parts, current = [], ""
    for piece in pieces:
        while len(piece) > limit:
            cut = piece.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            parts.append(piece[:cut])
            piece = piece[cut:].lstrip()
        if current and len(current) + 1 + len(piece) > limit:
            parts.append(current)
            current = piece
        else:
            current = f"{current}\n{piece}" if current else piece
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip()]


def item_result(item: JobItem, backend: str, error: str = "") -> ItemResult:
    """The manifest row of `item` before it is spoken (also the row of an item an executor could not run)."""
    return ItemResult(item.name, item.line, item.file, seed=item.seed, backend=backend, key=item.key,
                      start=item.start, end=item.end, speaker=item.speaker, voice=item.voice.label, error=error)


def synthesize_item(engine, item: JobItem, voices: VoiceCache | None = None) -> ItemOutcome:
    """`item` spoken by `engine`: a cue fitted to its slot (fitting.py), a long chapter in parts joined like
    sentences. Any failure of this item is its result's `error`; it never stops the job."""
    result = item_result(item, str(engine.plan))
    start = time.perf_counter()
    try:
        voice = (voices or VoiceCache(engine)).get(item.voice)
        audio = _speak(engine, item, voice, result)
    except CosyVoiceError as exc:
        result.error = one_line(exc)
        return ItemOutcome(result)
    except Exception as exc:  # noqa: BLE001 - a bug or a library's error fails this item, not the job
        result.error = f"internal error ({type(exc).__name__}: {one_line(exc)})"
        return ItemOutcome(result)
    elapsed = time.perf_counter() - start
    if audio.size == 0:
        result.error = "the model produced no speech for this text; try another seed"
        return ItemOutcome(result)
    result.seconds = round(len(audio) / engine.sample_rate, 4)
    result.rtf = round(elapsed / max(result.seconds, 1e-9), 4)
    if result.status == "failed":
        result.status = "ok"
    return ItemOutcome(result, audio.astype(np.float32), engine.sample_rate)


def _speak(engine, item: JobItem, voice, result: ItemResult) -> np.ndarray:
    transcript = "" if item.mode == "cross_lingual" else item.voice.transcript
    duration = item.duration
    if item.timed:
        fit = fit_cue(natural_seconds(engine, item.text, item.glossary), item.end - item.start)
        result.natural_seconds, result.target_seconds = round(fit.natural, 4), round(fit.target, 4)
        result.status = fit.status
        duration = fit.target
    parts = text_parts(item.text) if duration is None else [item.text]
    pieces = []
    for part in parts:
        request = SynthesisRequest(text=part, voice=voice, prompt_text=transcript, instruct=item.instruct,
                                   seed=item.seed, speed=item.speed, duration=duration,
                                   duration_method=item.duration_method, join=item.join, join_ms=item.join_ms,
                                   glossary=item.glossary)
        if item.mode is not None and choose_mode(request.transcript, item.instruct).name != item.mode:
            raise InputError(f"mode {item.mode} needs " + ("a transcript of the voice" if item.mode == "zero_shot"
                                                            else "an instruction"))
        pieces.append(engine.synthesize(request).audio)
    return Joiner.create(item.join, item.join_ms, engine.sample_rate).join(pieces)



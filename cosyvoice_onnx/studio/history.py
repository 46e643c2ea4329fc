"""Generated clips on disk (WAV + JSON side file), listed newest first, kept across restarts.

A clip that can be made again also keeps the prompt features it was made from (`prompts/<id>.npz|json`, the
saved-voice format, never pickled) and the glossary text, so neither a deleted upload nor a later edit of a
saved voice or of the glossary changes what a replay produces.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..audio import write_wav
from ..errors import InputError
from ..frontend import PromptFeatures
from ..voices import VoiceStore

DEFAULT_KEEP = 200


@dataclass
class Clip:
    id: str
    created: float
    mode: str
    text: str
    seconds: float
    backend: str
    seed: int
    voice: str = ""
    extra: str = ""
    # What replays the clip exactly, with `text`, `backend` (the plan's canonical string) and `seed`: the
    # resolved sampler, the saved voice's name (empty for an uploaded clip) and the request's controls.
    sampler: str = ""
    voice_name: str = ""
    controls: dict = field(default_factory=dict)
    # The model folder and the glossary JSON ("" = none) the clip was made with; None in entries written before
    # they were recorded, which replay with the studio's current model and glossary.
    model: str | None = None
    glossary: str | None = None
    prompt_kept: bool = False


class History:
    """One folder; a clip is `<id>.wav` plus `<id>.json`. Only ids this class made are ever opened."""

    def __init__(self, root: Path, keep: int = DEFAULT_KEEP):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._lock = threading.Lock()

    def add(self, audio: np.ndarray, rate: int, *, mode: str, text: str, backend: str, seed: int,
            voice: str = "", extra: str = "", sampler: str = "", voice_name: str = "",
            controls: dict | None = None, model: str | None = None, glossary: str | None = None,
            prompt: PromptFeatures | None = None) -> Clip:
        created = time.time()
        # Time first so names sort by age; the random part keeps two clips in one second apart.
        clip_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(created)) + "-" + secrets.token_hex(3)
        clip = Clip(clip_id, created, mode, text, round(len(audio) / rate, 3), backend, int(seed), voice, extra,
                    sampler, voice_name, dict(controls or {}), model, glossary, prompt is not None)
        with self._lock:
            if prompt is not None:
                self._prompts.save(clip_id, prompt, overwrite=True)
            write_wav(self.root / f"{clip_id}.wav", audio, rate)
            tmp = self.root / f"{clip_id}.json.tmp"
            tmp.write_text(json.dumps(asdict(clip), ensure_ascii=False), encoding="utf-8")
            tmp.replace(self.root / f"{clip_id}.json")
            self._prune()
        return clip

    def clips(self) -> list[Clip]:
        out = []
        for meta in self.root.glob("*.json"):
            try:
                clip = Clip(**json.loads(meta.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                continue  # a foreign or damaged file is skipped, never fatal
            if clip.id == meta.stem and self.wav_path(clip.id).exists():
                out.append(clip)
        return sorted(out, key=lambda c: c.created, reverse=True)

    def wav_path(self, clip_id: str) -> Path:
        return self.root / f"{Path(clip_id).name}.wav"

    @property
    def _prompts(self) -> VoiceStore:
        return VoiceStore(self.root / "prompts")

    def prompt(self, clip: Clip) -> PromptFeatures | None:
        """The prompt features a clip was made from, when it kept them."""
        return self._prompts.load(clip.id) if clip.prompt_kept else None

    def _remove(self, clip_id: str) -> None:
        self.wav_path(clip_id).unlink(missing_ok=True)
        (self.root / f"{clip_id}.json").unlink(missing_ok=True)
        try:
            self._prompts.delete(clip_id)
        except InputError:
            pass  # the clip kept no prompt

    def get(self, clip_id: str) -> Clip | None:
        return next((c for c in self.clips() if c.id == clip_id), None)

    def delete(self, clip_id: str) -> bool:
        clip = self.get(clip_id)
        if clip is None:
            return False
        with self._lock:
            self._remove(clip.id)
        return True

    def _prune(self) -> None:
        for clip in self.clips()[self.keep:]:
            self._remove(clip.id)

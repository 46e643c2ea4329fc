"""Saved voices: prompt features stored as .npz arrays + .json metadata (never pickled), and spk2info.pt import."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .frontend import PromptFeatures

FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"[^\W_][\w .\-]{0,63}")
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
FINGERPRINT_SAMPLE = 1 << 20
SPEECH_CODES = 6561         # CV3 speech tokenizer codebook size
TOKEN_RATE = 25             # speech tokens per second

# The official spk2info.pt holds a few prompts of ~10 s each (a few MB); anything far larger is not one.
MAX_SPK2INFO_BYTES = 256 << 20


def default_voices_dir() -> Path:
    """$COSYVOICE_VOICES_DIR, else the per-user data folder (XDG_DATA_HOME or ~/.local/share)."""
    if os.environ.get("COSYVOICE_VOICES_DIR"):
        return Path(os.environ["COSYVOICE_VOICES_DIR"]).expanduser()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "cosyvoice-onnx" / "voices"


def validate_name(name: str) -> str:
    """A voice name safe as a file name on every OS: 1-64 letters, digits, spaces, '-', '_', '.', starting
    with a letter or digit, not ending in a space or dot, not a reserved Windows device name."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name[-1] in " ." \
            or name.split(".")[0].strip().upper() in WINDOWS_RESERVED:
        raise InputError(f"invalid voice name {name!r}: use 1-64 letters, digits, spaces, '-', '_' or '.', "
                         "starting with a letter or digit (no path separators, no reserved names like CON)")
    return name


def file_fingerprint(path: Path) -> str:
    """sha256 over the size and the first and last MiB: tells model files apart without reading 1 GB."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_SAMPLE))
        f.seek(max(size - FINGERPRINT_SAMPLE, 0))
        digest.update(f.read(FINGERPRINT_SAMPLE))
    return digest.hexdigest()


def model_fingerprint(campplus: Path, speech_tokenizer: Path) -> str:
    """Identifies the two models whose outputs a voice stores (speaker embedding, speech tokens)."""
    return hashlib.sha256((file_fingerprint(campplus) + file_fingerprint(speech_tokenizer)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    transcript: str
    seconds: float | None
    created: str
    model: str | None
    compatible: bool | None     # None when the store does not know the current model


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_arrays(tokens: np.ndarray, mel: np.ndarray, embedding: np.ndarray, source: str) -> None:
    problems = []
    if tokens.ndim != 2 or tokens.shape[0] != 1 or tokens.shape[1] == 0 or tokens.dtype.kind not in "iu":
        problems.append(f"speech tokens {tokens.dtype}{list(tokens.shape)} (want int [1, n])")
    elif tokens.min() < 0 or tokens.max() >= SPEECH_CODES:
        problems.append(f"speech tokens outside 0 .. {SPEECH_CODES - 1}")
    if mel.ndim != 3 or mel.shape[0] != 1 or mel.shape[2] != 80 or mel.dtype.kind != "f":
        problems.append(f"mel {mel.dtype}{list(mel.shape)} (want float [1, T, 80])")
    if embedding.size != 192 or embedding.dtype.kind != "f":
        problems.append(f"embedding {embedding.dtype}{list(embedding.shape)} (want float [1, 192])")
    if problems:
        raise InputError(f"{source}: not a usable voice: {'; '.join(problems)}")


class VoiceStore:
    """A folder of named voices: `<name>.npz` (tokens, mel, embedding) beside `<name>.json` (transcript, meta)."""

    def __init__(self, root: str | Path, model: str | None = None):
        self.root = Path(root).expanduser()
        self.model = model

    def _paths(self, name: str) -> tuple[Path, Path]:
        validate_name(name)
        return self.root / f"{name}.npz", self.root / f"{name}.json"

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if p.with_suffix(".npz").exists()
                      and NAME_PATTERN.fullmatch(p.stem))

    def save(self, name: str, voice: PromptFeatures, overwrite: bool = False) -> VoiceInfo:
        arrays_path, meta_path = self._paths(name)
        clash = [n for n in self.names() if n.casefold() == name.casefold() and n != name]
        if clash:
            raise InputError(f"a voice named {clash[0]!r} exists; names differing only in case would collide "
                             "on Windows and macOS")
        if meta_path.exists() and not overwrite:
            raise InputError(f"a voice named {name!r} exists already; delete it or save with overwrite")
        tokens = np.asarray(voice.speech_tokens).astype(np.int64)
        mel = np.asarray(voice.mel, dtype=np.float32)
        embedding = np.asarray(voice.embedding, dtype=np.float32).reshape(1, -1)
        _check_arrays(tokens, mel, embedding, name)
        self.root.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, speech_tokens=tokens, mel=mel, embedding=embedding)
        meta = {"format": FORMAT_VERSION, "name": name, "transcript": voice.transcript,
                "meta": voice.meta, "model": self.model,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _atomic_write(arrays_path, buffer.getvalue())
        _atomic_write(meta_path, json.dumps(meta, ensure_ascii=False, indent=2, default=str).encode("utf-8"))
        return self._info(name, meta)

    def _read_meta(self, name: str) -> dict:
        _, meta_path = self._paths(name)
        if not meta_path.exists():
            known = ", ".join(self.names()) or "none saved yet"
            raise InputError(f"no saved voice named {name!r} in {self.root} (voices: {known})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{meta_path}: unreadable voice metadata ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise InputError(f"{meta_path}: not a voice file of format {FORMAT_VERSION}")
        return meta

    def _info(self, name: str, meta: dict) -> VoiceInfo:
        seconds = (meta.get("meta") or {}).get("seconds")
        model = meta.get("model")
        compatible = None if self.model is None or model is None else model == self.model
        return VoiceInfo(name, str(meta.get("transcript", "")), seconds, str(meta.get("created", "")), model,
                         compatible)

    def list(self) -> list[VoiceInfo]:
        return [self._info(name, self._read_meta(name)) for name in self.names()]

    def load(self, name: str, strict: bool = False) -> PromptFeatures:
        """The saved features; a voice saved with other frontend models warns (strict: raises InputError)."""
        meta = self._read_meta(name)
        info = self._info(name, meta)
        if info.compatible is False:
            message = (f"voice {name!r} was saved with other speaker/speech-tokenizer models "
                       f"({info.model} != {self.model}); it will not sound like its source")
            if strict:
                raise InputError(message)
            warnings.warn(message, stacklevel=2)
        arrays_path, _ = self._paths(name)
        try:
            with np.load(arrays_path, allow_pickle=False) as data:
                tokens, mel, embedding = data["speech_tokens"], data["mel"], data["embedding"]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{arrays_path}: unreadable voice arrays ({exc})") from exc
        _check_arrays(tokens, mel, embedding, str(arrays_path))
        extra = dict(meta.get("meta") or {}, voice=name, foreign_model=info.compatible is False)
        return PromptFeatures(tokens.astype(np.int64), mel.astype(np.float32),
                              embedding.astype(np.float32).reshape(1, -1), str(meta.get("transcript", "")), extra)

    def delete(self, name: str) -> None:
        arrays_path, meta_path = self._paths(name)
        if not meta_path.exists() and not arrays_path.exists():
            raise InputError(f"no saved voice named {name!r} in {self.root}")
        arrays_path.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)

    def import_spk2info(self, path: str | Path, tokenizer, overwrite: bool = False) -> dict[str, str]:
        """Official spk2info.pt entries (from add_zero_shot_spk) saved as voices: {name: 'saved' or why not}.

        tokenizer decodes the stored prompt-text ids back to the transcript (special tokens kept, so the
        system prompt and <|endofprompt|> reach the LM as the official model stored them).
        """
        import torch  # only this import path needs torch

        from .model_files import expanded_size

        unpacked = expanded_size(Path(path)) if Path(path).is_file() else 0
        if unpacked > MAX_SPK2INFO_BYTES:
            raise InputError(f"{Path(path).name}: the speaker table unpacks to {unpacked / 1e6:.0f} MB, more than the "
                             f"{MAX_SPK2INFO_BYTES / 1e6:.0f} MB a speaker table needs; not loaded")
        try:
            table = torch.load(Path(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, zip errors...
            raise InputError(f"{path}: cannot read speaker table ({str(exc).splitlines()[0][:200]})") from exc
        if not isinstance(table, dict):
            raise InputError(f"{path}: expected a dict of speakers, found {type(table).__name__}")
        results = {}
        for speaker, entry in table.items():
            try:
                voice = spk2info_voice(entry, tokenizer)
                self.save(validate_name(str(speaker)), voice, overwrite=overwrite)
                results[str(speaker)] = "saved"
            except InputError as exc:
                results[str(speaker)] = f"skipped: {exc}"
        return results


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def spk2info_voice(entry, tokenizer) -> PromptFeatures:
    """One spk2info entry -> PromptFeatures (keys of the official zero-shot model input)."""
    if not isinstance(entry, dict):
        raise InputError("entry is not a dict")
    needed = ("flow_prompt_speech_token", "prompt_speech_feat", "flow_embedding")
    missing = [k for k in needed if k not in entry]
    if missing:
        raise InputError(f"no zero-shot prompt (missing {', '.join(missing)}); SFT speakers cannot be imported")
    tokens = _numpy(entry["flow_prompt_speech_token"]).astype(np.int64).reshape(1, -1)
    if "llm_prompt_speech_token" in entry and not np.array_equal(
            _numpy(entry["llm_prompt_speech_token"]).reshape(-1), tokens.reshape(-1)):
        raise InputError("its LM and flow prompts differ, which a single voice cannot hold")
    transcript = ""
    if "prompt_text" in entry and "llm_prompt_speech_token" in entry:
        transcript = tokenizer.decode(_numpy(entry["prompt_text"]).reshape(-1).tolist(), skip_special_tokens=False)
    mel = _numpy(entry["prompt_speech_feat"]).astype(np.float32)
    embedding = _numpy(entry["flow_embedding"]).astype(np.float32).reshape(1, -1)
    _check_arrays(tokens, mel, embedding, "spk2info entry")
    return PromptFeatures(tokens, mel, embedding, transcript, {"source": "spk2info.pt",
                                                               "seconds": round(tokens.shape[1] / TOKEN_RATE, 3)})

"""Audio in and out: decode to mono float32 at a target rate, validate prompts, write 16-bit WAV."""

from __future__ import annotations

import io
import math
from os import PathLike
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import soxr

from .errors import InputError

AudioSource = Union[str, PathLike, bytes, bytearray, BinaryIO, tuple]

MIN_SOURCE_RATE = 16000
MIN_PROMPT_SECONDS = 1.0
MAX_PROMPT_SECONDS = 30.0          # the speech tokenizer refuses longer input
MAX_UPLOAD_BYTES = 50 << 20        # an uploaded clip; a 30 s prompt is at most ~12 MB even as 48 kHz stereo float WAV
SILENCE_PEAK = 1e-2                # -40 dBFS: speech peaks far above this, even quiet recordings
SILENCE_RMS = 1e-3                 # -60 dBFS: catches a click or two in otherwise silent audio

_INT_SCALES = {np.dtype(np.int16): 1.0 / 32768.0, np.dtype(np.int32): 1.0 / 2147483648.0}


def _describe(source: AudioSource) -> str:
    if isinstance(source, (str, PathLike)):
        return f"'{source}'"
    if isinstance(source, tuple):
        return "the recorded audio"
    return "the uploaded audio"


def _decode_file(source: AudioSource, name: str) -> tuple[np.ndarray, int]:
    if isinstance(source, (str, PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"audio file {name} not found" if not path.exists() else f"{name} is not a file")
        if path.stat().st_size == 0:
            raise InputError(f"audio file {name} is empty (0 bytes)")
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise InputError(f"{name} is empty (0 bytes)")
        source = io.BytesIO(source)
    # A file object is rewound afterwards because a prompt is decoded once per sample rate.
    start = source.tell() if hasattr(source, "seekable") and source.seekable() else None
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InputError(f"cannot read {name} as audio: it is not a supported audio file "
                         f"or it is corrupt ({exc})") from exc
    finally:
        if start is not None:
            source.seek(start)
    return data, int(rate)


def _decode_array(source: tuple, name: str) -> tuple[np.ndarray, int]:
    if len(source) != 2:
        raise InputError(f"{name}: expected a (sample_rate, samples) pair")
    rate, samples = source
    samples = np.asarray(samples)
    if not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise InputError(f"{name}: bad sample rate {rate!r}")
    if samples.ndim not in (1, 2):
        raise InputError(f"{name}: expected samples shaped [N] or [N, channels], got {samples.shape}")
    if samples.dtype in _INT_SCALES:
        data = samples.astype(np.float32) * np.float32(_INT_SCALES[samples.dtype])
    elif np.issubdtype(samples.dtype, np.floating):
        data = samples.astype(np.float32)
    else:
        raise InputError(f"{name}: unsupported sample type {samples.dtype} (use int16, int32 or float)")
    return (data[:, None] if data.ndim == 1 else data), int(rate)


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling to the length torchaudio gives, ceil(N * target / source)."""
    if source_rate == target_rate:
        return audio
    target_length = math.ceil(len(audio) * target_rate / source_rate)
    # soxr rounds the output length where torchaudio rounds up; zeros past the end give the missing tail
    # sample the same way torchaudio's zero-padded filter does.
    tail = np.zeros(math.ceil(source_rate / target_rate), dtype=audio.dtype)
    resampled = soxr.resample(np.concatenate([audio, tail]), source_rate, target_rate, quality="VHQ")
    return np.ascontiguousarray(resampled[:target_length], dtype=np.float32)


def load_audio(source: AudioSource, target_rate: int) -> np.ndarray:
    """Any libsndfile format (path, bytes, file object) or a Gradio (rate, samples) pair -> mono float32 [N]."""
    name = _describe(source)
    data, rate = _decode_array(source, name) if isinstance(source, tuple) else _decode_file(source, name)
    if data.shape[0] == 0:
        raise InputError(f"{name} contains no audio samples")
    if rate < MIN_SOURCE_RATE:
        raise InputError(f"{name} has a sample rate of {rate} Hz; at least {MIN_SOURCE_RATE} Hz is needed")
    mono = data.mean(axis=1, dtype=np.float32)
    # The official code resamples with torchaudio's sinc_interp_hann; we use soxr (no torchaudio for torch 2.13).
    return resample(mono, rate, target_rate)


def check_prompt_audio(wav16k: np.ndarray, sample_rate: int = 16000, *, min_seconds: float = MIN_PROMPT_SECONDS,
                       max_seconds: float = MAX_PROMPT_SECONDS, what: str = "prompt audio",
                       limit: str = "the speech tokenizer limit; trim it") -> None:
    """Raises InputError unless the clip is finite, audible and between min_seconds and max_seconds long.

    `what` names the clip in the messages (a prompt, a voice-conversion source); `limit` says why the upper bound."""
    seconds = len(wav16k) / sample_rate
    if not np.all(np.isfinite(wav16k)):
        raise InputError(f"the {what} contains NaN or infinite samples")
    if seconds < min_seconds:
        raise InputError(f"the {what} is {seconds:.2f} s long; at least {min_seconds:g} s is needed")
    if seconds > max_seconds:
        raise InputError(f"the {what} is {seconds:.1f} s long; at most {max_seconds:g} s is supported ({limit})")
    peak = float(np.max(np.abs(wav16k)))
    rms = float(np.sqrt(np.mean(np.square(wav16k, dtype=np.float64))))
    if peak < SILENCE_PEAK or rms < SILENCE_RMS:
        raise InputError(f"the {what} is silent (peak {peak:.2g}, RMS {rms:.2g}); record or upload speech")


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16; clipped first so out-of-range samples saturate instead of wrapping."""
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def write_wav(path: str | PathLike, audio: np.ndarray, rate: int) -> None:
    """Writes mono float audio as 16-bit PCM WAV."""
    sf.write(str(path), to_int16(np.asarray(audio).reshape(-1)), rate, subtype="PCM_16", format="WAV")

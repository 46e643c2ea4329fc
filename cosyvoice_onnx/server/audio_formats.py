"""Audio out of the server: 16-bit PCM in WAV, raw PCM and FLAC by soundfile; mp3, opus and aac by ffmpeg.

Every format is made from the same 16-bit samples (`audio.to_int16`), so a WAV from the server holds exactly
the samples the engine's own output rounds to. ffmpeg is the system's or imageio-ffmpeg's static binary.
"""

from __future__ import annotations

import functools
import io
import shutil
import struct
import subprocess

import numpy as np
import soundfile as sf

from ..audio import to_int16
from ..errors import InputError

MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg",
               "opus": "audio/ogg", "aac": "audio/aac"}
# ffmpeg's muxer and codec per format it makes.
FFMPEG_FORMATS = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac")}
STREAM_FORMATS = ("pcm", "wav")
FFMPEG_SECONDS = 120          # an encode of the longest request takes a few seconds; a hung ffmpeg is killed


@functools.cache
def find_ffmpeg() -> str | None:
    """The ffmpeg binary: on PATH, else imageio-ffmpeg's; None when neither is there."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def available_formats() -> list[str]:
    return ["wav", "pcm", "flac"] + (list(FFMPEG_FORMATS) if find_ffmpeg() else [])


def pcm16(audio: np.ndarray) -> bytes:
    """Mono 16-bit little-endian samples."""
    return to_int16(np.asarray(audio, dtype=np.float32).reshape(-1)).astype("<i2").tobytes()


def streaming_wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say 'unknown' (0xFFFFFFFF), as streamed WAV needs: players read the
    data until the connection ends."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


def check_format(fmt: str, stream: bool) -> None:
    """Refuses a format this server cannot make now (no ffmpeg) or cannot stream, naming what is missing."""
    if fmt in FFMPEG_FORMATS and find_ffmpeg() is None:
        raise InputError(f"response_format {fmt!r} needs ffmpeg, which this server does not have (pip install "
                         f"imageio-ffmpeg, or install ffmpeg); available: {', '.join(available_formats())}")
    if stream and fmt not in STREAM_FORMATS:
        raise InputError(f"streaming sends {' or '.join(STREAM_FORMATS)} only; ask for response_format "
                         f"'pcm' or 'wav', or set stream to false for {fmt!r}")


def encode(audio: np.ndarray, rate: int, fmt: str) -> bytes:
    """The whole clip in `fmt`."""
    if fmt == "pcm":
        return pcm16(audio)
    if fmt in ("wav", "flac"):
        buffer = io.BytesIO()
        sf.write(buffer, to_int16(np.asarray(audio, dtype=np.float32).reshape(-1)), rate, subtype="PCM_16",
                 format=fmt.upper())
        return buffer.getvalue()
    if fmt in FFMPEG_FORMATS:
        return _ffmpeg_encode(pcm16(audio), rate, fmt)
    raise InputError(f"unknown response_format {fmt!r}; choose one of {', '.join(available_formats())}")


def _ffmpeg_encode(pcm: bytes, rate: int, fmt: str) -> bytes:
    check_format(fmt, stream=False)
    muxer, codec = FFMPEG_FORMATS[fmt]
    command = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(rate), "-ac", "1",
               "-i", "pipe:0", "-c:a", codec, "-f", muxer, "pipe:1"]
    try:
        done = subprocess.run(command, input=pcm, capture_output=True, timeout=FFMPEG_SECONDS, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"ffmpeg took over {FFMPEG_SECONDS} s to encode {fmt}") from exc
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise RuntimeError(f"ffmpeg could not encode {fmt}: {reason[0][:300]}")
    return done.stdout

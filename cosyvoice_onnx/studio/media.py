"""Audio between the engine and Gradio: uploads in as bytes, results out as (24000, int16)."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..audio import MAX_UPLOAD_BYTES, to_int16
from ..errors import InputError

RECOMMENDED_PROMPT_SECONDS = (3.0, 10.0)


def read_upload(path: str | None, what: str = "prompt audio") -> bytes | None:
    """The uploaded file's bytes (decoded later by soundfile); None when nothing was uploaded."""
    if not path:
        return None
    file = Path(path)
    if not file.is_file():
        raise InputError(f"the {what} upload is missing on the server; upload it again")
    size = file.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"the {what} file is {size / 1e6:.0f} MB; at most {MAX_UPLOAD_BYTES >> 20} MB is accepted")
    # Bytes, not the path: error messages then say "the uploaded audio" instead of a temp-file name.
    return file.read_bytes()


def to_output(audio: np.ndarray, rate: int) -> tuple[int, np.ndarray]:
    """int16, because Gradio peak-normalises float arrays and the studio must play what the model made."""
    return rate, to_int16(np.asarray(audio, dtype=np.float32).reshape(-1))


def ffmpeg_available() -> bool:
    """Gradio's streaming audio player encodes chunks with ffmpeg."""
    return shutil.which("ffmpeg") is not None


def provide_ffmpeg() -> str | None:
    """ffmpeg on PATH for Gradio: the system's, else imageio-ffmpeg's static binary (a pip package).

    Gradio runs the name `ffmpeg`, and imageio-ffmpeg's binary has a versioned name, so a private folder gets a
    link named `ffmpeg` to it and goes first on PATH. Returns the ffmpeg Gradio will run, or None.
    """
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
        binary = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None
    folder = tempfile.mkdtemp(prefix="cosyvoice-ffmpeg-")   # private (0700): nobody else can swap the link
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.symlink(binary, os.path.join(folder, "ffmpeg"))
    os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ffmpeg")


def upload_error(exc: Exception, what: str, path: str | None) -> InputError:
    """A decode error of an upload, naming the clip's role and its file name (never a temp path or object)."""
    message = re.sub(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>", "the file", str(exc))
    name = Path(path).name if path else ""
    return InputError(f"{what} {name!r}: {message}" if name else f"{what}: {message}")


def prompt_length_warning(seconds: float | None) -> str | None:
    low, high = RECOMMENDED_PROMPT_SECONDS
    if seconds is None or low <= seconds <= high:
        return None
    return (f"the prompt clip is {seconds:.1f} s; {low:g}–{high:g} s of clean speech clones best"
            + (" (longer clips slow every request)" if seconds > high else ""))

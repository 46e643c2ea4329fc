"""An input file to text: bounded size, UTF-8 / UTF-16 / UTF-32 (with or without a byte-order mark), binary
refused; its kind from the suffix (or, without a known one, from the content); the matching reader."""

from __future__ import annotations

import codecs
from pathlib import Path

from ..errors import InputError
from .items import ParsedInput

MAX_INPUT_BYTES = 5 << 20      # a feature film's subtitles are ~100 KB, a novel ~1 MB of text
MAX_ITEMS = 10_000             # items per job (the studio takes fewer: studio/batch_job.py)
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".srt": "srt", ".vtt": "vtt", ".txt": "text", ".md": "text",
         ".markdown": "text"}
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def decode_text(data: bytes, name: str) -> str:
    """The text of an input file; a binary file (audio, an archive, an image) is refused with one line."""
    if not data:
        raise InputError(f"{name} is empty")
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{name} is {len(data) / 1e6:.1f} MB; at most {MAX_INPUT_BYTES >> 20} MB is read")
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), None)
    start = len(next(bom for bom, enc in _BOMS if enc == encoding)) if encoding else 0
    if encoding is None and b"\x00" in data[:4096]:
        # No mark, but zero bytes: UTF-16 text of Latin script has them at every other position.
        head = data[:4096]
        odd, even = head[1::2].count(0), head[0::2].count(0)
        if len(head) % 2 == 0 and max(odd, even) > len(head) // 4 and min(odd, even) == 0:
            encoding = "utf-16-le" if odd > even else "utf-16-be"
    try:
        text = data[start:].decode(encoding or "utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{name} is not text in UTF-8 or UTF-16 (a binary file, or another encoding: save it as "
                         "UTF-8)") from None
    controls = sum(1 for c in text[:65536] if ord(c) < 32 and c not in "\t\n\r\f")
    if "\x00" in text or controls > len(text[:65536]) // 100:
        raise InputError(f"{name} looks like a binary file, not text; give a JSONL, SRT, VTT, TXT or MD file")
    return text


def detect_kind(name: str, text: str) -> str:
    """jsonl, srt, vtt or text: from the suffix, else from the content."""
    kind = KINDS.get(Path(name).suffix.lower())
    if kind:
        return kind
    stripped = text.lstrip()
    if stripped.startswith("WEBVTT"):
        return "vtt"
    if "-->" in text[:2000]:
        return "srt"
    if stripped.startswith("{"):
        return "jsonl"
    return "text"


def parse_input(data: bytes, name: str, *, allow_paths: bool = True, max_items: int = MAX_ITEMS) -> ParsedInput:
    """Reads a whole input (the bytes of file `name`) into items; a bad line is a Problem, not an exception.

    allow_paths: whether JSONL lines may name prompt clips by path (not for uploads to a shared studio)."""
    from .read_jsonl import read_jsonl
    from .read_subtitles import read_srt, read_vtt
    from .read_text import read_text

    text = decode_text(data, name)
    kind = detect_kind(name, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if kind == "jsonl":
        parsed = read_jsonl(text, allow_paths=allow_paths)
    elif kind == "srt":
        parsed = read_srt(text)
    elif kind == "vtt":
        parsed = read_vtt(text)
    else:
        parsed = read_text(text)
    if len(parsed.items) > max_items:
        raise InputError(f"{name} has {len(parsed.items)} items; at most {max_items} are run in one job (split it)")
    if not parsed.items and not parsed.problems:
        raise InputError(f"{name} has nothing to speak")
    return parsed


def read_input_file(path: str | Path, **options) -> ParsedInput:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {path} not found" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise InputError(f"{path} is {path.stat().st_size / 1e6:.1f} MB; at most {MAX_INPUT_BYTES >> 20} MB is read")
    return parse_input(path.read_bytes(), path.name, **options)

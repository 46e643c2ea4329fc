"""JSONL input: one JSON object per line, each one request; a line may override any of the job's defaults."""

from __future__ import annotations

import json
from typing import Any

from ..duration import DURATION_METHODS
from ..errors import InputError
from ..prompts import choose_mode
from ..request import check_number, check_seed
from .items import BatchItem, ParsedInput, Problem, check_output_name

# Field -> what it must be. `voice`: a saved voice; `prompt_wav` + `prompt_text`: a clip (path relative to the
# input file) and its transcript; `mode`: zero_shot, cross_lingual or instruct (checked against what is given).
FIELDS = ("text", "name", "voice", "prompt_wav", "prompt_text", "mode", "instruct", "seed", "speed", "duration",
          "duration_method")
LINE_MODES = ("zero_shot", "cross_lingual", "instruct")
MAX_LINE_CHARS = 20_000


def read_jsonl(text: str, *, allow_paths: bool = True) -> ParsedInput:
    parsed = ParsedInput("jsonl")
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            parsed.items.append(_item(line, number, allow_paths))
        except InputError as exc:
            parsed.problems.append(Problem(number, str(exc), name=f"line-{number:04d}"))
    return parsed


def _item(line: str, number: int, allow_paths: bool) -> BatchItem:
    if len(line) > MAX_LINE_CHARS:
        raise InputError(f"the line is {len(line)} characters; at most {MAX_LINE_CHARS}")
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise InputError(f"expected a JSON object like {{\"text\": \"...\"}}, got {type(row).__name__}")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    for key in ("text", "name", "voice", "prompt_wav", "prompt_text", "mode", "instruct", "duration_method"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise InputError(f"{key} must be a string, not {type(row[key]).__name__}")
    text = row.get("text")
    if not text or not text.strip():
        raise InputError("no text to speak (\"text\" is missing or empty)")
    if row.get("prompt_wav") and not allow_paths:
        raise InputError("prompt_wav paths are not accepted here; name a saved voice with \"voice\"")
    if row.get("voice") and row.get("prompt_wav"):
        raise InputError("give either voice or prompt_wav, not both")
    mode = row.get("mode")
    if mode is not None and mode not in LINE_MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(LINE_MODES)}")
    if mode == "instruct" and not (row.get("instruct") or "").strip():
        raise InputError("mode instruct needs an \"instruct\" text")
    if mode is not None and row.get("instruct") and mode != "instruct":
        raise InputError(f"an instruction selects instruct mode, not {mode}")
    if mode is not None and row.get("prompt_text") is not None and mode != "instruct" \
            and choose_mode(row["prompt_text"], None).name != mode:
        raise InputError(f"mode {mode} does not match the prompt_text given (an empty one means cross_lingual)")
    method = row.get("duration_method")
    if method is not None and method not in DURATION_METHODS:
        raise InputError(f"unknown duration_method {method!r}; choose one of {', '.join(DURATION_METHODS)}")
    seed = None if row.get("seed") is None else check_seed(row["seed"])
    speed = _number(row, "speed")
    duration = _number(row, "duration")
    if duration is not None and duration <= 0:
        raise InputError(f"duration must be a positive number of seconds, got {duration}")
    name = check_output_name(row["name"]) if row.get("name") is not None else f"line-{number:04d}"
    return BatchItem(line=number, name=name, text=text, voice=row.get("voice"), prompt_wav=row.get("prompt_wav"),
                     prompt_text=row.get("prompt_text"), mode=mode, instruct=row.get("instruct"), seed=seed,
                     speed=speed, duration=duration, duration_method=method)


def _number(row: dict[str, Any], key: str) -> float | None:
    return None if row.get(key) is None else check_number(key, row[key])

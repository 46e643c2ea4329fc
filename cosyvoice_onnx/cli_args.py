"""Argument types of the command line: each option value is checked where it is parsed, before any model loads.

A type raises `argparse.ArgumentTypeError`, which the parser reports as one `error: argument --x: ...` line with
exit status 2. Output paths are checked here too, so a typo in `--out` fails at once instead of after a long run.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import InputError
from .request import MAX_SEED


def seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {text} is outside 0 .. 2**64-1 ({MAX_SEED})")
    return value


def int_range(low: int, high: int) -> Callable[[str], int]:
    """A whole number in low .. high (both included)."""
    def parse(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, got {text}")
        return value

    return parse


def float_range(low: float, high: float, *, above_low: bool = False) -> Callable[[str], float]:
    """A finite number in low .. high; with above_low, strictly greater than low."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not (low < value if above_low else low <= value) or value > high:
            bound = f"greater than {low:g}" if above_low else f"at least {low:g}"
            if math.isfinite(high):
                bound = f"between {low:g} and {high:g}" if not above_low else f"{bound} and at most {high:g}"
            raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text}")
        return value

    return parse


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


# ---------------------------------------------------------------- paths


def _path_type(problem_of: Callable[[Path], str | None], doc: str) -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        path = Path(text).expanduser()
        problem = problem_of(path)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return path

    parse.__doc__ = doc
    return parse


output_file = _path_type(lambda path: output_file_problem(path),
                         "A file to write: not a folder, in a folder that exists and can be written, not read-only.")
output_dir = _path_type(lambda path: output_dir_problem(path),
                        "A folder to write into: a folder, or not there yet under a folder that can be written.")


folder = _path_type(lambda path: f"{path} is a file, not a folder" if path.exists() and not path.is_dir() else None,
                    "A folder that may not exist yet (created on first write), but is not a file.")


def check_output_dir(path: Path) -> None:
    """The same check as `output_dir`, for a folder that comes from a default rather than an option."""
    problem = output_dir_problem(path)
    if problem:
        raise InputError(problem)


def output_file_problem(path: Path) -> str | None:
    if path.is_dir():
        return f"{path} is a folder; give a file name, e.g. {path / 'out.wav'}"
    parent = path.parent
    if not parent.exists():
        return f"folder {parent} does not exist; create it first or choose another path"
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} exists and cannot be overwritten (read-only)"
    return writable_problem(parent)


def output_dir_problem(path: Path) -> str | None:
    if path.exists():
        return writable_problem(path) if path.is_dir() else f"{path} is a file, not a folder"
    existing = next(p for p in path.absolute().parents if p.exists())    # the root always exists
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    return writable_problem(existing)


def writable_problem(directory: Path) -> str | None:
    # Creating a file is the only reliable test: permission bits say nothing about read-only mounts or root.
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        return f"cannot write in folder {directory}: {exc.strerror or exc}"
    return None

"""The job's record: a journal appended as each item finishes (what a rerun resumes from) and the final
manifest as JSONL and CSV (item, file, seconds, seed, backend, RTF, error and the cue columns)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, fields
from pathlib import Path

from ..voices import _atomic_write
from .synthesize import ItemResult

JOURNAL = ".journal.jsonl"
MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
COLUMNS = ["item", "line", "file", "seconds", "seed", "backend", "rtf", "error", "status", "start", "end",
           "natural_seconds", "target_seconds", "speaker", "voice", "resumed", "key"]


def row(result: ItemResult) -> dict:
    data = asdict(result)
    data["item"] = data.pop("name")
    return {column: data[column] for column in COLUMNS}


def from_row(data: dict) -> ItemResult | None:
    """An ItemResult from a journal/manifest row; None for a row this version does not understand."""
    try:
        values = {f.name: data["item" if f.name == "name" else f.name] for f in fields(ItemResult)}
    except (KeyError, TypeError):
        return None
    return ItemResult(**values)


def write_atomic(path: Path, text: str) -> None:
    """A reader never sees half a file (the voice store's writer)."""
    _atomic_write(path, text.encode("utf-8"))


class Journal:
    """Append-only record of finished items in the output folder; the last row per item wins."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / JOURNAL

    def read(self) -> dict[str, ItemResult]:
        done: dict[str, ItemResult] = {}
        if not self.path.is_file():
            return done
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                result = from_row(json.loads(line))
            except json.JSONDecodeError:
                continue          # a line cut short by a crash
            if result is not None:
                done[result.name] = result
        return done

    def append(self, result: ItemResult) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row(result), ensure_ascii=False) + "\n")

    def rewrite(self, results: list[ItemResult]) -> None:
        write_atomic(self.path, "".join(json.dumps(row(r), ensure_ascii=False) + "\n" for r in results))


def write_manifest(out_dir: Path, results: list[ItemResult]) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    rows = [row(r) for r in results]
    jsonl = out_dir / MANIFEST_JSONL
    write_atomic(jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS)
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    table = out_dir / MANIFEST_CSV
    write_atomic(table, buffer.getvalue())
    return jsonl, table

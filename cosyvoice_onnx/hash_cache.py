"""SHA-256 of large files, remembered by file identity so checkpoints and graphs are hashed once, not per load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_NAME = ".sha256-cache.json"
CACHE_FORMAT = 1
MAX_ENTRIES = 256  # a model folder's checkpoints plus every graph of every precision, several times over


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _identity(path: Path) -> list[int]:
    """What changes whenever the content can have changed: a rewrite changes the size, mtime or inode, and any
    write or `touch` back to an old mtime changes the ctime, which no user call can set."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class HashCache:
    """SHA-256 per absolute path, valid while the file's identity is unchanged, kept in a small JSON file.

    A missing, corrupt or foreign cache file is ignored (everything is hashed again); a cache that cannot be
    written (a read-only export folder) only means hashing again next time.
    """

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.entries = self._read(self.path)
        self.dirty = False

    @classmethod
    def in_folder(cls, folder: Path) -> "HashCache":
        return cls(Path(folder) / CACHE_NAME)

    @staticmethod
    def _read(path: Path | None) -> dict:
        if path is None:
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("files"), dict):
            return {}
        return {key: entry for key, entry in list(data["files"].items())[-MAX_ENTRIES:]
                if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("identity"), list)}

    def sha256(self, path: Path) -> str:
        path = Path(path)
        key = str(path.resolve())
        identity = _identity(path)
        entry = self.entries.get(key)
        if entry and entry["identity"] == identity:
            return entry["sha256"]
        digest = file_sha256(path)
        if _identity(path) == identity:  # not rewritten while it was read
            self.entries.pop(key, None)
            self.entries[key] = {"identity": identity, "sha256": digest}
            while len(self.entries) > MAX_ENTRIES:
                self.entries.pop(next(iter(self.entries)))
            self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty or self.path is None:
            return
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "files": self.entries}), encoding="utf-8")
            tmp.replace(self.path)
            self.dirty = False
        except OSError:
            tmp.unlink(missing_ok=True)

"""Studio settings from the command line, and the check on every model folder a user types."""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError


def default_concurrency() -> int:
    """One synthesis per four cores: each request already runs its matrix products on several threads."""
    return max(1, (os.cpu_count() or 1) // 4)


@dataclass
class StudioSettings:
    """What the command line parsed: folders, the default backend, how many requests run and wait at once."""

    model_dir: Path | None = None
    backend: str = "torch"
    device: str = "auto"                       # where stages run unless a per-stage spec names a device
    data_dir: Path = Path("studio_data")
    models_dir: Path = Path("models")
    allow_dirs: list[Path] = field(default_factory=list)   # more folders model paths may lie under
    stream_player: bool | None = None          # None: decide from whether ffmpeg is installed
    concurrency: int = 0                       # requests running at once; 0: default_concurrency()
    max_queue: int = 0                         # requests waiting; 0: 16 per running request, at least 64
    engine_lock: bool = False                  # True: one request at a time per loaded engine
    cache_seconds: int = 600                   # Gradio's files (uploads, results) older than this are deleted

    def __post_init__(self):
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.models_dir = Path(self.models_dir).expanduser().resolve()
        self.model_dir = Path(self.model_dir).expanduser().resolve() if self.model_dir else None
        self.allow_dirs = [Path(p).expanduser().resolve() for p in self.allow_dirs]
        self.concurrency = self.concurrency or default_concurrency()
        self.max_queue = self.max_queue or max(64, 16 * self.concurrency)
        if self.concurrency < 1 or self.max_queue < 1 or self.cache_seconds < 1:
            raise InputError("concurrency, queue size and cache seconds must be at least 1")

    @property
    def voices_dir(self) -> Path:
        return self.data_dir / "voices"

    @property
    def history_dir(self) -> Path:
        return self.data_dir / "history"

    def allowed_roots(self) -> list[Path]:
        """Folders a model path typed in the page may lie under (a shared studio must not open arbitrary paths).

        Exactly the --model folder, the models and data folders and each --allow-dir: never the working
        directory or a parent, which for `--model /model` would be the whole filesystem.
        """
        roots = [self.models_dir, self.data_dir, *self.allow_dirs]
        if self.model_dir:
            roots.insert(0, self.model_dir)
        return roots


def check_model_folder(text: str, settings: StudioSettings) -> Path:
    """A model folder typed in the page: must exist and lie under one of the allowed roots."""
    text = (text or "").strip()
    if not text:
        raise InputError("no model folder is set: pick one in the Models tab (a folder you have, or the tiny test "
                         "model), or start the studio with --model DIR")
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise InputError("the model folder path contains control characters")
    path = Path(text).expanduser().resolve()
    roots = settings.allowed_roots()
    if not any(path == root or root in path.parents for root in roots):
        # The allowed folders are not listed: a remote user has no business learning the server's layout.
        raise InputError(f"the model folder {text!r} is outside the folders this studio may open; whoever runs "
                         "the studio can allow it with --allow-dir FOLDER (or --model FOLDER)")
    if not path.is_dir():
        raise InputError(f"model folder {text!r} does not exist")
    return path

"""Studio settings from the command line, and the check on every model folder a user types."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass
class StudioSettings:
    """What app.py parsed: the model folder, the default backend and where voices, history and downloads live."""

    model_dir: Path | None = None
    backend: str = "torch"
    data_dir: Path = Path("studio_data")
    models_dir: Path = Path("models")
    stream_player: bool | None = None          # None: decide from whether ffmpeg is installed

    def __post_init__(self):
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.models_dir = Path(self.models_dir).expanduser().resolve()
        self.model_dir = Path(self.model_dir).expanduser().resolve() if self.model_dir else None

    @property
    def voices_dir(self) -> Path:
        return self.data_dir / "voices"

    @property
    def history_dir(self) -> Path:
        return self.data_dir / "history"

    def allowed_roots(self) -> list[Path]:
        """Folders a model path typed in the page may lie under (a shared studio must not open arbitrary paths)."""
        roots = [Path.cwd().resolve(), self.data_dir, self.models_dir]
        if self.model_dir:
            roots.append(self.model_dir.parent)
        return roots


def check_model_folder(text: str, settings: StudioSettings) -> Path:
    """A model folder typed in the page: must exist and lie under one of the allowed roots."""
    text = (text or "").strip()
    if not text:
        raise InputError("no model folder is set: give one with --model, or download one in the Models tab")
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise InputError("the model folder path contains control characters")
    path = Path(text).expanduser().resolve()
    roots = settings.allowed_roots()
    if not any(path == root or root in path.parents for root in roots):
        raise InputError(f"{path} is outside the folders this studio may open "
                         f"({', '.join(str(r) for r in roots)}); start it with --model {path}")
    if not path.is_dir():
        raise InputError(f"model folder {path} does not exist")
    return path

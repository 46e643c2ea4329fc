"""The Glossary tab's work: the studio's pronunciation glossary as a table, edits, CSV import/export, a preview."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from ..errors import InputError
from ..glossary import CSV_COLUMNS, Glossary, GlossaryEntry, glossary_path
from .handlers import Studio, user_errors
from .media import read_upload

COLUMNS = ["term", "reading", "kind", "case_sensitive", "whole_word", "model receives"]


class GlossaryAdmin:
    """Bound to one Studio: its data folder holds glossary.json; one edit at a time (read, change, write)."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.path = glossary_path(studio.settings.data_dir)
        self._lock = threading.Lock()

    def _rows(self, glossary: Glossary) -> list[list]:
        return [[e.term, e.reading, e.kind, e.case_sensitive, e.whole_word, e.tokens] for e in glossary.entries]

    @user_errors
    def rows(self) -> list[list]:
        return self._rows(Glossary.load(self.path))

    def _edit(self, change) -> list[list]:
        with self._lock:
            glossary = change(Glossary.load(self.path))  # raises before anything is written
            glossary.save(self.path)
        return self._rows(glossary)

    @user_errors
    def add(self, term: str, reading: str, kind: str = "respell", case_sensitive: bool = False,
            whole_word: bool = False) -> list[list]:
        """Adds the entry, or replaces the one with the same term (that is how an entry is edited)."""
        entry = GlossaryEntry(term or "", reading or "", kind or "respell", bool(case_sensitive), bool(whole_word))
        return self._edit(lambda glossary: glossary.with_entry(entry))

    @user_errors
    def delete(self, term: str) -> list[list]:
        if not (term or "").strip():
            raise InputError("type the term to delete (or click its row)")
        return self._edit(lambda glossary: glossary.without(term))

    @user_errors
    def import_csv(self, upload: str | None, replace: bool = False) -> list[list]:
        """Merges (or with `replace`, swaps in) a CSV; the whole file is checked before the glossary changes."""
        data = read_upload(upload, "glossary CSV")
        if data is None:
            raise InputError(f"upload a CSV file with the columns {', '.join(CSV_COLUMNS)}")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError("the glossary CSV is not UTF-8 text; save it as CSV UTF-8") from None
        imported = Glossary.from_csv(text, "the uploaded CSV")
        return self._edit(lambda glossary: imported if replace else glossary.merged(imported))

    @user_errors
    def export_csv(self) -> str:
        """A CSV file of the glossary for download (in Gradio's cache, which the studio cleans)."""
        folder = Path(tempfile.mkdtemp(prefix="glossary-"))
        path = folder / "glossary.csv"
        path.write_text(Glossary.load(self.path).to_csv(), encoding="utf-8")
        return str(path)

    @user_errors
    def preview(self, text: str, model_dir: str = "") -> str:
        """The text as the model receives it: the glossary's readings substituted, normalised, one sentence per
        line; pinyin/ARPAbet entries are refused when the chosen model's release has no such tokens."""
        from ..releases import RELEASES, detect_version
        from ..request import check_text
        from ..text import normalize
        from ..tokenizer import ADDED_TOKENS_BY_VERSION

        text = check_text(text)
        glossary = Glossary.load(self.path)
        if (model_dir or "").strip() or self.studio.settings.model_dir:
            release = RELEASES[detect_version(self.studio.model_folder(model_dir))]
            glossary.check_tokenizer(ADDED_TOKENS_BY_VERSION[release.tokenizer_version])
        segments = normalize(glossary.apply(text))
        return "\n".join(segments if isinstance(segments, list) else [segments])

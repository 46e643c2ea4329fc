"""Pronunciation glossary: term -> reading fixes that apply to every text a request speaks.

A reading is pinyin (one syllable per Han character of the term, tone marks or digits: 'chóng qìng',
'chong2 qing4'), ARPAbet ('HH AH0 L OW1') or a plain respelling ('sequel' for 'SQL'). Pinyin and ARPAbet become
CosyVoice3's inpainting tokens ([ch][óng][q][ìng], [HH][AH0]...); a respelling is plain text, so it works on
every release.

Matching: the longest term wins where terms overlap (nested terms such as 'New York' and 'New York City' are
fine); two entries that could match the same text ('SQL' twice, or 'sql' case-insensitive beside 'SQL') are
refused. Terms never match inside tags ([laughter], <strong>, <|endofprompt|>) or inside tokens already written
in the text ([j][ǐ]), and a replacement is never matched again. `whole_word` needs a non-letter/digit on both
sides, so it suits Latin-script terms; Chinese text has no spaces between words.

Stored as JSON ({"version": 1, "entries": [...]}) written atomically; CSV import/export with the columns
term, reading, kind, case_sensitive, whole_word. A file is validated whole before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .pronunciation import TAG, arpabet_tokens, pinyin_tokens
from .text import CJK_IDEOGRAPH, MARKUP
from .tokenizer import ARPABET_TOKENS, PINYIN_TOKENS

GLOSSARY_FILE = "glossary.json"
KINDS = ("pinyin", "arpabet", "respell")
CSV_COLUMNS = ("term", "reading", "kind", "case_sensitive", "whole_word")
MAX_ENTRIES = 2000
MAX_TERM_CHARS = 100
MAX_READING_CHARS = 400
MAX_FILE_BYTES = 2_000_000
# A glossary can lengthen a text (a Han character becomes up to two tokens of several characters); the applied
# text is bounded so one request cannot grow the LM context without limit.
MAX_APPLIED_CHARS = 40_000
# Characters that delimit tags and tokens: a term holding them could match part of markup.
MARKUP_CHARS = frozenset("[]<>|")
# Tags and tokens already in the text, kept as they are: the model's added tokens and any tag-shaped markup.
_PROTECTED = re.compile(MARKUP.pattern + "|(" + TAG.pattern + ")")
_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"", "0", "false", "no", "n", "off"}


@dataclass(frozen=True)
class GlossaryEntry:
    """One fix: `term` is read as `reading` (of `kind`), checked when made; `tokens` is what replaces it."""

    term: str
    reading: str
    kind: str = "respell"
    case_sensitive: bool = False
    whole_word: bool = False

    def __post_init__(self):
        term = self.term.strip() if isinstance(self.term, str) else ""
        reading = " ".join(self.reading.split()) if isinstance(self.reading, str) else ""
        if not term:
            raise InputError("a glossary term is empty; write the word or name to fix")
        if len(term) > MAX_TERM_CHARS:
            raise InputError(f"the glossary term {term[:20]!r}… is {len(term)} characters; the limit is "
                             f"{MAX_TERM_CHARS}")
        if MARKUP_CHARS & set(term):
            raise InputError(f"the glossary term {term!r} contains one of [ ] < > |, which belong to tags")
        if self.kind not in KINDS:
            raise InputError(f"glossary term {term!r}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not reading:
            raise InputError(f"glossary term {term!r} has no reading")
        if len(reading) > MAX_READING_CHARS:
            raise InputError(f"glossary term {term!r}: the reading is {len(reading)} characters; the limit is "
                             f"{MAX_READING_CHARS}")
        object.__setattr__(self, "term", term)
        object.__setattr__(self, "reading", reading)
        object.__setattr__(self, "case_sensitive", bool(self.case_sensitive))
        object.__setattr__(self, "whole_word", bool(self.whole_word))
        object.__setattr__(self, "_tokens", self._spell())

    def _spell(self) -> str:
        try:
            if self.kind == "arpabet":
                return arpabet_tokens(self.reading)
            if self.kind == "pinyin":
                return self._pinyin()
        except InputError as exc:
            raise InputError(f"glossary term {self.term!r}: {exc}") from None
        return self.reading

    def _pinyin(self) -> str:
        syllables = self.reading.replace(",", " ").split()
        if not all(CJK_IDEOGRAPH.match(char) for char in self.term):
            raise InputError("a pinyin reading needs a term of Han characters only; use respell for other text")
        if len(syllables) != len(self.term):
            raise InputError(f"{len(self.term)} character(s) but {len(syllables)} pinyin syllable(s); give one "
                             "syllable per character, e.g. 'chóng qìng' or 'chong2 qing4'")
        return "".join(pinyin_tokens(syllable) for syllable in syllables)

    @property
    def tokens(self) -> str:
        """The text that replaces the term: CV3 tokens for pinyin/ARPAbet, the respelling itself otherwise."""
        return self._tokens  # type: ignore[attr-defined]

    def collides(self, other: GlossaryEntry) -> bool:
        if self.case_sensitive and other.case_sensitive:
            return self.term == other.term
        return self.term.casefold() == other.term.casefold()

    def pattern(self) -> str:
        body = re.escape(self.term)
        if not self.case_sensitive:
            body = f"(?i:{body})"
        return rf"(?<![^\W_]){body}(?![^\W_])" if self.whole_word else body

    def row(self) -> dict:
        return {"term": self.term, "reading": self.reading, "kind": self.kind,
                "case_sensitive": self.case_sensitive, "whole_word": self.whole_word}


@dataclass(frozen=True)
class Glossary:
    """An ordered set of entries with distinct terms; `apply(text)` is what the frontend feeds the model."""

    entries: tuple[GlossaryEntry, ...] = ()

    def __post_init__(self):
        entries = tuple(self.entries)
        if len(entries) > MAX_ENTRIES:
            raise InputError(f"the glossary has {len(entries)} entries; the limit is {MAX_ENTRIES}")
        for i, entry in enumerate(entries):
            for earlier in entries[:i]:
                if entry.collides(earlier):
                    raise InputError(f"glossary terms {earlier.term!r} and {entry.term!r} would match the same "
                                     "text; keep one (or make both case-sensitive)")
        object.__setattr__(self, "entries", entries)
        # Longest first: Python tries alternatives in order, so the first that matches is the longest term.
        ordered = sorted(entries, key=lambda e: len(e.term), reverse=True)
        object.__setattr__(self, "_ordered", tuple(ordered))
        object.__setattr__(self, "_regex", re.compile("|".join(f"({e.pattern()})" for e in ordered))
                           if ordered else None)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def needs_phone_tokens(self) -> bool:
        return any(e.kind != "respell" for e in self.entries)

    def check_tokenizer(self, added_tokens: Iterable[str]) -> None:
        """Pinyin/ARPAbet entries need the model's pronunciation tokens (CosyVoice3 has them, CosyVoice2 not)."""
        known = set(added_tokens)
        for entry in self.entries:
            needed = PINYIN_TOKENS if entry.kind == "pinyin" else ARPABET_TOKENS if entry.kind == "arpabet" else ()
            if needed and not known.issuperset(re.findall(r"\[[^\]]+\]", entry.tokens)):
                raise InputError(f"glossary term {entry.term!r} has a {entry.kind} reading, but this model has no "
                                 f"{entry.kind} tokens (CosyVoice3 has them); use a respell entry instead")

    def apply(self, text: str) -> str:
        """The text with every term replaced by its reading, longest match first, tags and tokens left alone."""
        if self._regex is None:  # type: ignore[attr-defined]
            return text
        parts = _PROTECTED.split(text)
        out = []
        # split() with two groups yields: text, markup-token, tag, text, ...; only the text pieces are matched.
        for i in range(0, len(parts), 3):
            out.append(self._regex.sub(self._replacement, parts[i]))  # type: ignore[attr-defined]
            out.extend(p for p in parts[i + 1:i + 3] if p)
        applied = "".join(out)
        if len(applied) > MAX_APPLIED_CHARS:
            raise InputError(f"with the glossary applied the text is {len(applied)} characters; the limit is "
                             f"{MAX_APPLIED_CHARS}. Split the text into parts.")
        return applied

    def _replacement(self, match: re.Match) -> str:
        return self._ordered[match.lastindex - 1].tokens  # type: ignore[attr-defined]

    # ---------------------------------------------------------------- editing (each returns a new glossary)

    def with_entry(self, entry: GlossaryEntry, replace_existing: bool = True) -> Glossary:
        """The glossary with `entry` added, or replacing the entry with the same term when replace_existing."""
        same = [e for e in self.entries if e.collides(entry)]
        if same and not replace_existing:
            raise InputError(f"the glossary already has {same[0].term!r}; edit or remove it first")
        kept = [e for e in self.entries if not e.collides(entry)]
        return Glossary(tuple(kept) + (entry,))

    def without(self, term: str) -> Glossary:
        found = [e for e in self.entries if e.term == term.strip()]
        if not found:
            found = [e for e in self.entries if e.term.casefold() == term.strip().casefold()]
        if not found:
            raise InputError(f"the glossary has no term {term!r}")
        return Glossary(tuple(e for e in self.entries if e is not found[0]))

    # ---------------------------------------------------------------- files

    def to_json(self) -> str:
        return json.dumps({"version": 1, "entries": [e.row() for e in self.entries]}, ensure_ascii=False, indent=2)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for entry in self.entries:
            writer.writerow({**entry.row(), "case_sensitive": str(entry.case_sensitive).lower(),
                             "whole_word": str(entry.whole_word).lower()})
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        from .voices import _atomic_write  # the voice store's writer: a reader never sees half a file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, self.to_json().encode("utf-8"))
        return path

    @classmethod
    def from_json(cls, text: str, where: str = "glossary") -> Glossary:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise InputError(f'{where}: expected {{"version": 1, "entries": [...]}}')
        return cls(tuple(_entry(row, f"{where}: entry {i + 1}") for i, row in enumerate(data["entries"])))

    @classmethod
    def from_csv(cls, text: str, where: str = "CSV") -> Glossary:
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "term" not in columns or "reading" not in columns or set(columns) - set(CSV_COLUMNS):
            raise InputError(f"{where}: the columns must be {', '.join(CSV_COLUMNS)} (term and reading required; "
                             f"found {', '.join(columns) or 'none'})")
        reader.fieldnames = columns
        entries = []
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise InputError(f"{where}: line {line} has more fields than the header")
            if not any((value or "").strip() for value in row.values()):
                continue
            entries.append(_entry({k: v for k, v in row.items() if v is not None}, f"{where}: line {line}"))
            if len(entries) > MAX_ENTRIES:
                raise InputError(f"{where}: more than {MAX_ENTRIES} entries")
        return cls(tuple(entries))

    @classmethod
    def load(cls, path: str | Path) -> Glossary:
        """The glossary in `path` (JSON); a missing file is an empty glossary."""
        path = Path(path)
        if not path.exists():
            return cls()
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{path}: larger than {MAX_FILE_BYTES // 1_000_000} MB; not a glossary")
        return cls.from_json(path.read_text(encoding="utf-8"), str(path))

    def merged(self, other: Glossary) -> Glossary:
        """This glossary with `other`'s entries added, each replacing an entry with the same term."""
        merged = self
        for entry in other.entries:
            merged = merged.with_entry(entry)
        return merged


def _flag(value, where: str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value if value is not None else "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(f"{where}: {name} must be true or false, not {value!r}")


def _entry(row, where: str) -> GlossaryEntry:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object with term and reading")
    try:
        return GlossaryEntry(term=row.get("term") or "", reading=row.get("reading") or "",
                             kind=(row.get("kind") or "respell").strip().lower(),
                             case_sensitive=_flag(row.get("case_sensitive"), where, "case_sensitive"),
                             whole_word=_flag(row.get("whole_word"), where, "whole_word"))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def glossary_path(folder: str | Path) -> Path:
    """Where a data folder keeps its glossary (beside the saved voices)."""
    return Path(folder) / GLOSSARY_FILE


__all__ = ["Glossary", "GlossaryEntry", "GLOSSARY_FILE", "KINDS", "CSV_COLUMNS", "glossary_path"]

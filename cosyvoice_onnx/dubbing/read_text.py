"""Plain text and Markdown input: one item per chapter (split on headings), its paragraphs in order.

Markdown markup that is not speech is dropped (code blocks, images, HTML tags, emphasis marks, link targets,
list and quote markers); a heading starts a chapter and is spoken as its first line. Text without headings is
one chapter. A chapter longer than MAX_ITEM_CHARS is spoken as several items (`chapter-003`, `chapter-003-2`,
...) split between paragraphs, so no one item's audio outgrows what is held in memory.
"""

from __future__ import annotations

import re

from .items import BatchItem, ParsedInput, Problem

MAX_ITEM_CHARS = 20_000     # ~20 min of speech, ~120 MB of float32 audio held for one item

ATX_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SETEXT_UNDERLINE = re.compile(r"^\s{0,3}(=+|-+)\s*$")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE = [(re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),          # images
          (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),      # links: their text
          (re.compile(r"<[^>]+>"), ""),                       # HTML tags
          (re.compile(r"`([^`]*)`"), r"\1"),                  # inline code: its text
          (re.compile(r"(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1"), r"\2")]   # emphasis marks
LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)]|>+)\s+")


def _clean(line: str) -> str:
    for pattern, replacement in INLINE:
        line = pattern.sub(replacement, line)
    return LIST_MARK.sub("", line).strip()


def read_text(text: str) -> ParsedInput:
    parsed = ParsedInput("text")
    chapters: list[tuple[int, list[tuple[int, str]]]] = []       # (first line, [(line, paragraph)])
    paragraph: list[str] = []
    lines = text.split("\n")
    fenced = False

    def end_paragraph():
        if paragraph:
            if not chapters:
                chapters.append((first_line, []))
            chapters[-1][1].append((first_line, " ".join(paragraph)))
            paragraph.clear()

    first_line = 1
    for number, line in enumerate(lines, start=1):
        if FENCE.match(line):
            fenced = not fenced
            end_paragraph()
            continue
        if fenced:
            continue
        heading = ATX_HEADING.match(line)
        following = lines[number] if number < len(lines) else ""
        if heading is None and line.strip() and not paragraph and SETEXT_UNDERLINE.match(following) \
                and not SETEXT_UNDERLINE.match(line):
            heading_text = line.strip()
        elif heading is not None:
            heading_text = heading.group(2)
        else:
            heading_text = None
        if heading_text is not None:
            end_paragraph()
            chapters.append((number, [(number, _clean(heading_text))] if _clean(heading_text) else []))
            continue
        if SETEXT_UNDERLINE.match(line) and not paragraph:
            continue   # the underline of a setext heading, or a rule
        cleaned = _clean(line)
        if not cleaned:
            end_paragraph()
            continue
        if not paragraph:
            first_line = number
        paragraph.append(cleaned)
    end_paragraph()
    for index, (line, paragraphs) in enumerate((c for c in chapters if c[1]), start=1):
        for part, (part_line, texts) in enumerate(_parts(paragraphs, parsed), start=1):
            name = f"chapter-{index:03d}" + (f"-{part}" if part > 1 else "")
            parsed.items.append(BatchItem(line=line if part == 1 else part_line, name=name, text="\n".join(texts)))
    return parsed


def _parts(paragraphs: list[tuple[int, str]], parsed: ParsedInput) -> list[tuple[int, list[str]]]:
    """A chapter's paragraphs in runs of at most MAX_ITEM_CHARS; a longer paragraph is a problem of its line."""
    parts: list[tuple[int, list[str]]] = []
    size = 0
    for line, text in paragraphs:
        if len(text) > MAX_ITEM_CHARS:
            parsed.problems.append(Problem(line, f"a paragraph of {len(text)} characters; at most {MAX_ITEM_CHARS} "
                                                 "(split it with a blank line)", name=f"line-{line:04d}"))
            continue
        if not parts or size + len(text) > MAX_ITEM_CHARS:
            parts.append((line, []))
            size = 0
        parts[-1][1].append(text)
        size += len(text) + 1
    return parts

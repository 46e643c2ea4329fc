"""Text helpers behind the tag buttons and the pinyin helper."""

from __future__ import annotations

from ..errors import InputError
from .handlers import user_errors

# (button label, opening text, closing text): span tags wrap the selection, event tags go at the cursor.
TAG_BUTTONS = (("[breath]", "[breath]", ""), ("[laughter]", "[laughter]", ""),
               ("<strong>…</strong>", "<strong>", "</strong>"))


def insert_tag_js(textarea_selector: str, opening: str, closing: str) -> str:
    """Browser-side insertion at the cursor (or around the selection): the server never sees the caret."""
    return f"""(text) => {{
  const box = document.querySelector({textarea_selector!r});
  text = text || "";
  const start = box ? box.selectionStart : text.length, end = box ? box.selectionEnd : text.length;
  return text.slice(0, start) + {opening!r} + text.slice(start, end) + {closing!r} + text.slice(end);
}}"""


def polyphone_choices(text: str) -> list[tuple[str, str]]:
    """Dropdown entries (label, 'index') for every polyphonic Han character of the text."""
    from ..pronunciation import polyphones

    # Positions count from 0, as in `cosyvoice-onnx pronounce`, `--reading INDEX=...` and the /apply_pinyin API.
    return [(f"{p.char} at position {p.index} (reads {p.default} here; also {', '.join(p.readings[1:])})",
             str(p.index))
            for p in polyphones(text or "")]


def reading_choices(text: str, index: str) -> list[tuple[str, str]]:
    """(label with its CV3 tokens, reading) for one character position."""
    from ..pronunciation import pinyin_tokens, polyphones

    found = {str(p.index): p for p in polyphones(text or "")}
    if index not in found:
        return []
    return [(f"{r}  →  {pinyin_tokens(r)}", r) for r in found[index].readings]


@user_errors
def apply_pinyin(text: str, index, reading: str) -> str:
    """The text with the character at `index` replaced by CV3 pinyin tokens such as [j][ǐ]."""
    from ..pronunciation import apply_reading

    if index in (None, "") or not reading:
        raise InputError("pick a character and one of its readings first")
    try:
        position = int(index)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the character position {index!r} is not a number") from exc
    return apply_reading(text or "", position, reading)

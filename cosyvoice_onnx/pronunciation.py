"""Pronunciation fixes: polyphonic characters, pinyin and ARPAbet inpainting tokens, and markup tag checks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InputError
from .text import CJK_IDEOGRAPH
from .tokenizer import ARPABET_TOKENS, PINYIN_TOKENS

PINYIN_UNITS = frozenset(token[1:-1] for token in PINYIN_TOKENS)
PINYIN_INITIALS = frozenset("b c ch d f g h j k l m n p q r s sh t w x y z zh".split())
ARPABET_PHONES = frozenset(token[1:-1] for token in ARPABET_TOKENS)
PINYIN_LETTERS = re.compile(r"^[a-zü\u0300-\u036f\u00c0-\u024f]+[1-5]?$")

# Tags are bracketed words ([breath]) or angle-bracket words (<strong>, </laughter>, <|endofprompt|>);
# brackets around anything else ("[1]", "a < b") are ordinary text and left alone.
TAG = re.compile(r"\[[A-Za-z_][A-Za-z0-9_\-]*\]|</?[A-Za-z_][A-Za-z0-9_\-]*>|<\|[^|<>]*\|>")


def _pinyin():
    import pypinyin  # loads its dictionaries on first use (about a second)

    return pypinyin


@dataclass(frozen=True)
class Polyphone:
    """A Han character with more than one reading: where it is, what pypinyin reads here, the choices."""

    index: int
    char: str
    default: str
    readings: tuple[str, ...]


def syllable_units(reading: str) -> tuple[str, ...]:
    """A pinyin syllable as CV3 pinyin units: ('j', 'ǐ'), ('y', 'ī'), ('ài',).

    Accepts tone marks ('jǐ') or tone digits ('ji3', 'lv4'). CV3 treats y and w as initials; a syllable
    without an initial is a single final. A reading the CV3 token list cannot spell raises InputError.
    """
    from pypinyin.contrib.tone_convert import to_finals_tone, to_initials, to_tone

    text = reading.strip().lower().replace("u:", "ü")
    if not text or not PINYIN_LETTERS.match(text):
        raise InputError(f"{reading!r} is not a pinyin syllable (write e.g. 'jǐ' or 'ji3')")
    syllable = to_tone(text)
    # strict=False keeps the written spelling: y/w stay initials and 'yuè' keeps its 'uè' final, as in CV3.
    initial = to_initials(syllable, strict=False)
    final = to_finals_tone(syllable, strict=False)
    if final not in PINYIN_UNITS and final.replace("ü", "v") in PINYIN_UNITS:
        final = final.replace("ü", "v")      # the list spells lüè/nüè's final as 'vè'
    units = (initial, final) if initial else (final,)
    # A final must not itself be an initial: syllabic nasals such as 'n' or 'm' have no CV3 spelling.
    if final in PINYIN_INITIALS or any(unit not in PINYIN_UNITS for unit in units):
        raise InputError(f"the reading {reading!r} ({syllable}) cannot be written with CosyVoice3's pinyin tokens")
    return units


def pinyin_tokens(reading: str) -> str:
    """'jǐ' -> '[j][ǐ]', 'ài' -> '[ài]': the inpainting form CV3 reads in place of a character."""
    return "".join(f"[{unit}]" for unit in syllable_units(reading))


def _spellable(reading: str) -> bool:
    try:
        syllable_units(reading)
    except InputError:
        return False
    return True


def readings(char: str) -> tuple[str, ...]:
    """All readings pypinyin knows for one character (tone marks), in its order."""
    pypinyin = _pinyin()
    return tuple(pypinyin.pinyin(char, style=pypinyin.Style.TONE, heteronym=True)[0])


def polyphones(text: str) -> list[Polyphone]:
    """Each Han character of `text` with two or more readings CV3 can spell (interjection readings such as
    'ňg' have no tokens and are left out), its in-context reading first."""
    pypinyin = _pinyin()
    # errors= keeps one entry per non-Han character, so the list lines up with the text's indices.
    in_context = pypinyin.lazy_pinyin(text, style=pypinyin.Style.TONE, errors=lambda chars: [""] * len(chars))
    if len(in_context) != len(text):
        in_context = [""] * len(text)
    found = []
    for index, char in enumerate(text):
        if not CJK_IDEOGRAPH.match(char):
            continue
        choices = [r for r in readings(char) if _spellable(r)]
        if len(choices) < 2:
            continue
        default = in_context[index] if in_context[index] in choices else choices[0]
        found.append(Polyphone(index, char, default, tuple([default] + [r for r in choices if r != default])))
    return found


def apply_reading(text: str, index: int, reading: str) -> str:
    """The text with the character at `index` replaced by the pinyin tokens of `reading`."""
    return apply_readings(text, {index: reading})


def apply_readings(text: str, choices: Mapping[int, str]) -> str:
    """Several replacements at once; indices refer to the original text."""
    for index in sorted(choices, reverse=True):
        if not 0 <= index < len(text) or not CJK_IDEOGRAPH.match(text[index]):
            raise InputError(f"position {index} of the text is not a Han character")
        reading, known = choices[index], readings(text[index])
        syllable = "".join(f"[{u}]" for u in syllable_units(reading))
        if syllable not in {pinyin_tokens(r) for r in known if _spellable(r)}:
            raise InputError(f"{reading!r} is not a reading of {text[index]!r}; "
                             f"pypinyin knows {', '.join(known)}")
        text = text[:index] + syllable + text[index + 1:]
    return text


def arpabet_tokens(phones: str) -> str:
    """'HH AH0 L OW1' -> '[HH][AH0][L][OW1]' (CMU phones, stress digits on vowels), checked against CV3's list."""
    units = phones.replace(",", " ").upper().split()
    if not units:
        raise InputError("no ARPAbet phones given, e.g. 'HH AH0 L OW1'")
    unknown = [u for u in units if u not in ARPABET_PHONES]
    if unknown:
        raise InputError(f"not CosyVoice3 ARPAbet phones: {', '.join(unknown)}; "
                         f"valid: {' '.join(sorted(ARPABET_PHONES))}")
    return "".join(f"[{u}]" for u in units)


def validate_tags(text: str, tokenizer) -> None:
    """Every tag in `text` must be one of the model's added tokens, and span tags must pair up.

    tokenizer: a TextTokenizer (its `added_tokens`) or any iterable of token strings.
    """
    known = set(getattr(tokenizer, "added_tokens", tokenizer))
    tags = TAG.findall(text)
    unknown = sorted({tag for tag in tags if tag not in known})
    if unknown:
        events = [t for t in known if t not in PINYIN_TOKENS and t not in ARPABET_TOKENS]
        raise InputError(f"unknown tag(s) {', '.join(unknown)}; this model knows {' '.join(sorted(events))} "
                         "and pinyin/ARPAbet phone tokens such as [j][ǐ] or [HH][AH0]")
    depth: dict[str, int] = {}
    for tag in tags:
        name = tag.strip("</>")
        if tag.startswith("</"):
            depth[name] = depth.get(name, 0) - 1
            if depth[name] < 0:
                raise InputError(f"{tag} closes a span that was not opened")
        elif tag.startswith("<") and not tag.startswith("<|") and f"</{name}>" in known:
            depth[name] = depth.get(name, 0) + 1
    unclosed = [f"<{name}>" for name, count in depth.items() if count > 0]
    if unclosed:
        raise InputError(f"{', '.join(unclosed)} is opened but never closed")

"""Text normalisation and sentence splitting: the official CosyVoice text_normalize, without ttsfrd."""

from __future__ import annotations

import functools
import itertools
import re
from typing import Callable

import regex

from cosyvoice_onnx.tokenizer import CV3_ADDED_TOKENS, QWEN2_PRETOKENIZE_REGEX

CJK_IDEOGRAPH = re.compile(r"[\u4e00-\u9fff]")
KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
DIGIT = re.compile(r"\d")
# Longest first so that e.g. "[AA1]" wins over a shorter token sharing its prefix.
MARKUP = re.compile("(" + "|".join(re.escape(t) for t in sorted(CV3_ADDED_TOKENS, key=len, reverse=True)) + ")")
PUNCTUATION_ONLY = regex.compile(r"[\p{P}\p{S}]*")
QWEN_PIECES = regex.compile(QWEN2_PRETOKENIZE_REGEX)

ZH_SENTENCE_END = ("。", "？", "！", "；", "：", "、", ".", "?", "!", ";")
EN_SENTENCE_END = (".", "?", "!", ";", ":")
COMMAS = ("，", ",")
CLOSING_QUOTES = ('"', "”")
JA_CLOSING_QUOTES = CLOSING_QUOTES + ("」", "』")

# Separators tried, coarse to fine, when wetext's grammar rejects a piece (its English tagger fails on line
# breaks, double spaces and some letter/digit mixes): line breaks or 2+ spaces first, then any whitespace.
_FALLBACK_SEPARATORS = (re.compile(r"(\s*[\r\n]\s*|\s{2,})"), re.compile(r"(\s+)"))

Tokenize = Callable[[str], list]


def detect_language(text: str) -> str:
    """'zh' if any CJK ideograph (the official test), 'ja' for kana without ideographs, else 'en'."""
    if CJK_IDEOGRAPH.search(text):
        return "zh"
    return "ja" if KANA.search(text) else "en"


def is_only_punctuation(text: str) -> bool:
    """True for strings made only of Unicode punctuation/symbols (or empty): such segments are not spoken."""
    return PUNCTUATION_ONLY.fullmatch(text) is not None


@functools.cache
def _wetext_normalizer(lang: str):
    """One wetext Normalizer per language, built on first use (importing wetext loads all its FSTs)."""
    try:
        from wetext import Normalizer
    except ImportError:
        return None
    # Language is fixed rather than wetext's "auto": the caller already chose the path with the same CJK test
    # wetext 0.0.4 used, and 0.1.x's auto reads an all-digit string as Chinese.
    return Normalizer(lang=lang, remove_erhua=False) if lang == "zh" else Normalizer(lang=lang)


def _wetext(text: str, lang: str) -> str:
    """wetext TN of one piece, as the pinned wetext 0.0.4 did it: only pieces with a digit are touched."""
    normalizer = _wetext_normalizer(lang)
    if normalizer is None or not DIGIT.search(text):
        return text
    return _with_fallback(text, normalizer.normalize, _FALLBACK_SEPARATORS)


def _with_fallback(text: str, convert: Callable[[str], str], separators) -> str:
    """convert(text), keeping its outer whitespace; on failure convert the parts between separators instead."""
    core = text.strip()
    if not core:
        return text
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()):]
    try:
        return lead + convert(core) + trail
    except Exception:  # the official code would crash here; a piece left unconverted is the graceful outcome
        if not separators:
            return text
        parts = separators[0].split(core)
        if len(parts) == 1:
            return _with_fallback(text, convert, separators[1:])
        return lead + "".join(p if i % 2 else _with_fallback(p, convert, separators[1:])
                              for i, p in enumerate(parts)) + trail


@functools.cache
def _inflect_engine():
    import inflect  # imported on first use: the import alone takes seconds
    return inflect.engine()


def spell_out_numbers(text: str) -> str:
    """Replace every maximal run of str.isdigit() characters by inflect's English words (the official rule).

    Like the official code this also catches digit-like symbols such as '²', which inflect reads as 'zero'.
    """
    runs = (("".join(group), is_digit) for is_digit, group in itertools.groupby(text, key=str.isdigit))
    return "".join(_inflect_engine().number_to_words(run) if is_digit else run for run, is_digit in runs)


def replace_blank(text: str) -> str:
    """Drop each ' ' unless both neighbours are non-space ASCII (keeps spaces between English words only).

    As officially, a leading space's left neighbour is the last character; a trailing space (where the official
    code raises IndexError) is dropped.
    """
    def keep(i: int) -> bool:
        return (i + 1 < len(text) and text[i - 1].isascii() and text[i - 1] != " "
                and text[i + 1].isascii() and text[i + 1] != " ")
    return "".join(c for i, c in enumerate(text) if c != " " or keep(i))


def _tidy_chinese(text: str) -> str:
    """The official zh clean-up after TN, in its order."""
    text = replace_blank(text.replace("\n", ""))
    text = text.replace("²", "平方").replace("³", "立方")
    text = text.replace(".", "。").replace(" - ", "，")
    # Only the ASCII backtick is removed (the official list names it twice).
    for bracket in ("（", "）", "【", "】", "`"):
        text = text.replace(bracket, "")
    text = text.replace("——", " ")
    return re.sub(r"[，,、]+$", "。", text)


def _map_outside_markup(text: str, convert: Callable[[str], str], protect_markup: bool) -> str:
    """Apply convert to the text between CosyVoice markup tokens, leaving the tokens untouched."""
    if not protect_markup:
        return convert(text)
    parts = MARKUP.split(text)
    return "".join(part if i % 2 else convert(part) for i, part in enumerate(parts))


def split_paragraph(text: str, tokenize: Tokenize | None, lang: str = "zh", token_max_n: int = 80,
                    token_min_n: int = 60, merge_len: int = 20, comma_split: bool = False,
                    keep_punctuation_runs: bool = False) -> list[str]:
    """Cut after sentence punctuation, then greedily merge pieces into segments (official split_paragraph).

    Length is characters for 'zh' and 'ja', len(tokenize(s)) for 'en'. A segment is flushed when adding the
    next piece would exceed token_max_n and it already exceeds token_min_n; a last segment shorter than
    merge_len joins the previous one. Officially a punctuation mark that directly follows another is dropped
    ("What?!" -> "What?"); keep_punctuation_runs=True keeps it on the preceding piece instead.
    """
    if not text:
        return []
    by_characters = lang != "en"
    if not by_characters and tokenize is None:
        raise ValueError("split_paragraph needs a tokenize function for lang='en'")

    def length(s: str) -> int:
        return len(s) if by_characters else len(tokenize(s))

    enders = set(EN_SENTENCE_END if lang == "en" else ZH_SENTENCE_END)
    if comma_split:
        enders.update(COMMAS)
    closers = JA_CLOSING_QUOTES if lang == "ja" else CLOSING_QUOTES
    if text[-1] not in enders:
        text += "." if lang == "en" else "。"

    pieces: list[str] = []
    start = 0
    for i, char in enumerate(text):
        if char not in enders:
            continue
        if i > start:
            pieces.append(text[start:i + 1])
        elif keep_punctuation_runs:
            if pieces:
                pieces[-1] += char
            else:
                pieces.append(char)
        if i + 1 < len(text) and text[i + 1] in closers:
            # Officially the quote goes onto the last piece even when this punctuation made none.
            if pieces:
                pieces[-1] += text[i + 1]
            else:
                pieces.append(text[i + 1])
            start = i + 2
        else:
            start = i + 1

    segments: list[str] = []
    current = ""
    for piece in pieces:
        if length(current + piece) > token_max_n and length(current) > token_min_n:
            segments.append(current)
            current = ""
        current += piece
    if current:
        if segments and length(current) < merge_len:
            segments[-1] += current
        else:
            segments.append(current)
    return segments


def _length_function(tokenizer) -> Tokenize:
    """The tokenizer's encode; without one, Qwen pre-token pieces (a close lower bound of the token count)."""
    if tokenizer is None:
        return QWEN_PIECES.findall
    return tokenizer.encode if hasattr(tokenizer, "encode") else tokenizer


def normalize(text: str, split: bool = True, tokenizer: object | Tokenize | None = None, *, protect_markup: bool = True,
              kana_as_japanese: bool = True, keep_punctuation_runs: bool = False) -> list[str] | str:
    """Normalise text for synthesis; with split=True return the sentence segments to synthesise one by one.

    Text containing both '<|' and '|>' is returned unchanged (official rule). Chinese (any CJK ideograph):
    wetext zh TN, then the official clean-up, split by characters. Otherwise English: wetext en TN, digit runs
    spelled out with inflect, split by text-token count (tokenizer: a TextTokenizer or any encode callable;
    None uses an approximate count). Options that differ from the official behaviour:
    protect_markup (default on): CosyVoice markup ([breath], <strong>, [AA1], [j][ǐ], ...) is kept out of TN and
      number spelling; officially "[AA1]" becomes "[AA一]" (zh) or "[AAone]" (en).
    kana_as_japanese (default on): kana text without ideographs gets no TN and no number spelling (neither
      grammar reads Japanese), loses line breaks, and is split like Chinese, with 」』 attached like quotes.
      Officially it takes the English path (English number words, split only on ASCII '.?!;:', '.' appended).
    keep_punctuation_runs: see split_paragraph.
    Empty or blank text gives [] (split) or "" (officially "" gives [""] and blank text raises).
    """
    if "<|" in text and "|>" in text:
        return [text] if split else text
    text = text.strip()
    if not text:
        return [] if split else ""
    lang = detect_language(text)
    if lang == "ja" and not kana_as_japanese:
        lang = "en"

    if lang == "zh":
        text = _tidy_chinese(_map_outside_markup(text, lambda s: _wetext(s, "zh"), protect_markup))
    elif lang == "en":
        text = _map_outside_markup(text, lambda s: spell_out_numbers(_wetext(s, "en")), protect_markup)
    else:
        text = text.replace("\n", "")
    if not split:
        return text
    segments = split_paragraph(text, _length_function(tokenizer), lang, token_max_n=80, token_min_n=60,
                               merge_len=20, comma_split=False, keep_punctuation_runs=keep_punctuation_runs)
    return [s for s in segments if not is_only_punctuation(s)]

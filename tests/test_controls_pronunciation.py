"""Pronunciation controls: pinyin/ARPAbet inpainting tokens, polyphones, reading replacement and tag checks."""

import pytest
from pypinyin import Style, pinyin
from pypinyin.pinyin_dict import pinyin_dict

from cosyvoice_onnx import text as textproc
from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.pronunciation import (apply_reading, apply_readings, arpabet_tokens, pinyin_tokens, polyphones,
                                          syllable_units, validate_tags)
from cosyvoice_onnx.tokenizer import ARPABET_TOKENS, PINYIN_TOKENS, TextTokenizer, write_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return TextTokenizer.from_dir(write_tiny_tokenizer(tmp_path_factory.mktemp("qwen")))


@pytest.mark.parametrize("reading, tokens", [
    ("jǐ", "[j][ǐ]"), ("ji3", "[j][ǐ]"), ("ài", "[ài]"), ("ér", "[ér]"), ("yī", "[y][ī]"), ("wǔ", "[w][ǔ]"),
    ("yuè", "[y][uè]"), ("yún", "[y][ún]"), ("lüè", "[l][vè]"), ("lve4", "[l][vè]"), ("lǜ", "[l][ǜ]"),
    ("zhōng", "[zh][ōng]"), ("shuāng", "[sh][uāng]"), ("xióng", "[x][ióng]"), ("ma", "[m][a]"), ("guì", "[g][uì]"),
])
def test_pinyin_tokens_follow_the_cv3_token_list(reading, tokens):
    assert pinyin_tokens(reading) == tokens
    assert all(f"[{unit}]" in PINYIN_TOKENS for unit in syllable_units(reading))


def test_every_spellable_dictionary_reading_spells_itself():
    """Independent check over all of pypinyin's readings: the units concatenate back to the syllable."""
    readings = {r for value in pinyin_dict.values() for r in value.split(",")}
    spelled = 0
    for reading in readings:
        try:
            units = syllable_units(reading)
        except InputError:
            continue
        spelled += 1
        assert "".join(units).replace("v", "ü") == reading
        assert len(units) in (1, 2)
    assert spelled >= len(readings) - 40     # the gaps: interjections (ňg, m̀, ê̄) and a few neutral-tone finals


@pytest.mark.parametrize("reading", ["ńg", "m̀", "n", "er", "xyz", "", "ji9", "j i"])
def test_unspellable_readings_are_refused(reading):
    with pytest.raises(InputError):
        pinyin_tokens(reading)


def test_pinyin_inpainting_gives_the_official_token_ids(tokenizer):
    text = apply_reading("对报道给予好评", 3, "jǐ")
    assert text == "对报道[j][ǐ]予好评"
    ids = tokenizer.encode(text)
    assert 151797 in ids and 151913 in ids          # [j], [ǐ] (CV3 added tokens)
    assert ids.index(151913) == ids.index(151797) + 1
    # The normalised text that reaches the LM still holds both tokens.
    (segment,) = textproc.normalize(text, tokenizer=tokenizer)
    assert "[j][ǐ]" in segment
    assert [i for i in tokenizer.encode(segment) if i >= 151646] == [151797, 151913]


def test_polyphones_list_positions_and_pypinyin_readings():
    text = "我们对报道给予好评，他很会长大。"
    found = {p.index: p for p in polyphones(text)}
    for index, entry in found.items():
        assert text[index] == entry.char
        known = pinyin(entry.char, style=Style.TONE, heteronym=True)[0]
        assert set(entry.readings) <= set(known) and len(entry.readings) >= 2
        assert entry.readings[0] == entry.default
    assert found[5].char == "给" and set(found[5].readings) == {"gěi", "jǐ"}
    assert found[13].default == "zhǎng"              # 长大: pypinyin's phrase reading in context
    assert 0 not in found                             # 我 has one reading


def test_apply_readings_uses_original_indices_and_checks_them():
    assert apply_readings("长长", {0: "cháng", 1: "zhǎng"}) == "[ch][áng][zh][ǎng]"
    with pytest.raises(InputError, match="not a reading"):
        apply_reading("给", 0, "hǎo")
    with pytest.raises(InputError, match="not a Han character"):
        apply_reading("ab", 1, "jǐ")


def test_arpabet_tokens():
    assert arpabet_tokens("HH AH0 L OW1") == "[HH][AH0][L][OW1]"
    assert arpabet_tokens("hh ah0 l ow1") == "[HH][AH0][L][OW1]"
    assert all(t in ARPABET_TOKENS for t in ("[HH]", "[AH0]", "[L]", "[OW1]"))
    with pytest.raises(InputError, match="XX"):
        arpabet_tokens("HH XX")


def test_validate_tags(tokenizer):
    validate_tags("[breath]你好<strong>世界</strong>，[laughter]对报道[j][ǐ]予[HH][AH0]好评 [1] a < b", tokenizer)
    with pytest.raises(InputError, match=r"\[laugh\].*\[laughter\]"):
        validate_tags("hello [laugh] there", tokenizer)
    with pytest.raises(InputError, match="never closed"):
        validate_tags("<strong>hello", tokenizer)
    with pytest.raises(InputError, match="not opened"):
        validate_tags("hello</strong>", tokenizer)

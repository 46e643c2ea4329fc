"""Text normalisation and sentence splitting, checked against hand-worked examples and inflect."""

import inflect
import pytest

from cosyvoice_onnx.text import (
    MARKUP,
    detect_language,
    is_only_punctuation,
    normalize,
    replace_blank,
    spell_out_numbers,
    split_paragraph,
)
from cosyvoice_onnx.tokenizer import TextTokenizer, write_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return TextTokenizer.from_dir(write_tiny_tokenizer(tmp_path_factory.mktemp("qwen")))


def words(text):
    return text.split()


# ---------------------------------------------------------------- split_paragraph (hand-worked)

def test_split_flushes_only_when_over_max_and_buffer_over_min():
    # pieces of 5, 5, 5, 3 characters; max 8, min 4
    assert split_paragraph("aaaa。bbbb。cccc。dd。", None, "zh", token_max_n=8, token_min_n=4, merge_len=3) == [
        "aaaa。", "bbbb。", "cccc。dd。"]
    # buffer of 3 is not over min 3, so the 7-character piece joins it despite exceeding max 5
    assert split_paragraph("ab。cdefgh。", None, "zh", token_max_n=5, token_min_n=3, merge_len=0) == ["ab。cdefgh。"]


def test_split_short_leftover_joins_previous():
    assert split_paragraph("aaaa。bbbb。c。", None, "zh", token_max_n=5, token_min_n=4, merge_len=3) == [
        "aaaa。", "bbbb。c。"]
    assert split_paragraph("aaaa。bbbb。c。", None, "zh", token_max_n=5, token_min_n=4, merge_len=2) == [
        "aaaa。", "bbbb。", "c。"]


def test_split_appends_final_punctuation_per_language():
    assert split_paragraph("你好", None, "zh") == ["你好。"]
    assert split_paragraph("Hello", words, "en") == ["Hello."]
    # '。' is not an English sentence end
    assert split_paragraph("Hello。World", words, "en") == ["Hello。World."]


def test_split_attaches_closing_quotes():
    assert split_paragraph('他说："你好。"然后走了。', None, "zh", token_max_n=1, token_min_n=0, merge_len=0) == [
        '他说："', '你好。"', '然后走了。']
    assert split_paragraph("「ハイ。」ソウ。", None, "ja", token_max_n=1, token_min_n=0, merge_len=0) == [
        "「ハイ。」", "ソウ。"]


def test_split_counts_tokens_for_english():
    text = "one two three. four five. six."
    # word counts 3, 2, 1 with max 3, min 2: flush after the first piece, then 2 + 1 = 3 is not over max
    assert split_paragraph(text, words, "en", token_max_n=3, token_min_n=2, merge_len=0) == [
        "one two three.", " four five. six."]


def test_split_drops_punctuation_runs_like_official_unless_asked():
    assert split_paragraph("What?! Really...", words, "en") == ["What? Really."]
    assert split_paragraph("What?! Really...", words, "en", keep_punctuation_runs=True) == ["What?! Really..."]
    assert split_paragraph("!!Hi", words, "en") == ["Hi."]
    assert split_paragraph("!!Hi", words, "en", keep_punctuation_runs=True) == ["!!Hi."]


def test_split_comma_option():
    assert split_paragraph("甲，乙", None, "zh", token_max_n=1, token_min_n=0, merge_len=0) == ["甲，乙。"]
    assert split_paragraph("甲，乙", None, "zh", token_max_n=1, token_min_n=0, merge_len=0, comma_split=True) == [
        "甲，", "乙。"]


def test_split_empty_text():
    assert split_paragraph("", None, "zh") == []


# ---------------------------------------------------------------- helpers

def test_is_only_punctuation():
    assert is_only_punctuation("") and is_only_punctuation("。！？") and is_only_punctuation("$%…「」")
    assert not is_only_punctuation("a。") and not is_only_punctuation(" 。") and not is_only_punctuation("你")


def test_replace_blank_keeps_spaces_between_ascii_words_only():
    assert replace_blank("你好 world foo 世界") == "你好world foo世界"
    assert replace_blank("a  b") == "ab"
    assert replace_blank("a b ") == "a b"


def test_spell_out_numbers_uses_inflect_on_digit_runs():
    engine = inflect.engine()
    expected = "abc" + engine.number_to_words("123") + "def" + engine.number_to_words("45")
    assert spell_out_numbers("abc123def45") == expected
    assert spell_out_numbers("123") == "one hundred and twenty-three"
    assert spell_out_numbers("no digits") == "no digits"


def test_detect_language():
    assert detect_language("你好 hello") == "zh"
    assert detect_language("今日はいい天気") == "zh"  # kanji are CJK ideographs: the official test says Chinese
    assert detect_language("コンニチハ") == "ja"
    assert detect_language("hello") == "en"


# ---------------------------------------------------------------- normalize

def test_english_numbers(tokenizer):
    assert normalize("I have 3 apples.", tokenizer=tokenizer) == ["I have three apples."]
    assert normalize("Call me at 10:30am on Jan 5, 2024.", split=False) == (
        "Call me at ten thirty AM on the fifth of january, twenty twenty four.")


def test_chinese_numbers_and_cleanup():
    assert normalize("我有3个苹果") == ["我有三个苹果。"]
    assert normalize("2024年5月6日", split=False) == "二零二四年五月六日"
    assert normalize("你好.世界") == ["你好。世界。"]
    assert normalize("面积x²，体积y³，（括号）【方括号】`代码`——破折号，，", split=False) == (
        "面积x平方，体积y立方，括号方括号代码 破折号。")
    assert normalize("第一 - 第二", split=False) == "第一-第二"  # replace_blank runs before the ' - ' rule


def test_special_token_text_is_untouched():
    text = "You are a helpful assistant.<|endofprompt|>I have 3 apples.  "
    assert normalize(text) == [text]
    assert normalize(text, split=False) == text


@pytest.mark.parametrize("text", [
    "我有3个苹果[breath]，<strong>2024年</strong>很好，对报道[j][ǐ]予好评。[AA1][B]第2次[laughter]",
    "I have 3 apples[breath] and <strong>25</strong> pears, [K][AE1][T] 2 cats <laughter>lol 3</laughter>.",
])
def test_markup_survives(text, tokenizer):
    out = "".join(normalize(text, tokenizer=tokenizer))
    assert MARKUP.findall(out) == MARKUP.findall(text)
    assert not any(c.isdigit() for c in MARKUP.sub("", out))


def test_official_markup_corruption_is_available():
    assert "[AA一]" in normalize("我有[AA1]2个", split=False, protect_markup=False)


def test_english_splitting_uses_the_tokenizer(tokenizer):
    sentence = "a" * 69 + "."
    text = " ".join([sentence] * 3)
    # counting characters as tokens: 70 + 71 > 80 and 70 > 60, so every sentence is its own segment
    assert normalize(text, tokenizer=list) == [sentence, " " + sentence, " " + sentence]
    segments = normalize("Hello there. " * 40, tokenizer=tokenizer)
    assert len(segments) > 1 and "".join(segments) == ("Hello there. " * 40).strip()
    assert all(len(tokenizer.encode(s)) <= 80 + 3 for s in segments[:-1])


def test_punctuation_only_segments_are_dropped():
    text = "好" * 70 + "。" + "「」" * 10
    assert normalize(text) == ["好" * 70 + "。"]


def test_japanese_kana():
    text = "コンニチハ、3ツノリンゴ。ゲンキ？\nソウデス"
    assert normalize(text) == ["コンニチハ、3ツノリンゴ。ゲンキ？ソウデス。"]
    official = normalize(text, kana_as_japanese=False, tokenizer=list)
    assert official == ["コンニチハ、threeツノリンゴ。ゲンキ？\nソウデス."]


def test_blank_text():
    assert normalize("   ") == [] and normalize(" \n ", split=False) == ""


def test_wetext_rejected_input_falls_back_per_piece():
    # wetext's English grammar rejects line breaks and double spaces; the official code crashes here
    assert normalize("Hello   there,\n line 2 on Jan 5, 2024", split=False) == (
        "Hello   there,\n line two on the fifth of january, twenty twenty four")

"""Text tokenizer: official CosyVoice ids, literal added tokens, and agreement with a plain-Python Qwen2 BPE."""

import json
import random
import unicodedata

import pytest
import regex

from cosyvoice_onnx.errors import ModelFolderError
from cosyvoice_onnx.tokenizer import (
    CV2_ADDED_TOKENS,
    CV3_ADDED_TOKENS,
    TextTokenizer,
    write_tiny_tokenizer,
)

# Ids listed in the spec (derived from llm.py's hard-coded 151646 and the official token order).
SPEC_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
    "<|endofprompt|>": 151646, "[breath]": 151647, "[mn]": 151662, "<|endofsystem|>": 151663,
    "[AA]": 151664, "[ZH]": 151747, "[a]": 151748, "[j]": 151797, "[ǐ]": 151913, "[ǜ]": 151923,
}

# Written out independently of the module under test (transformers' tokenization_qwen2.py).
REFERENCE_PRETOKENIZE = regex.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def tokenizer(qwen_dir):
    return TextTokenizer.from_dir(qwen_dir, "cosyvoice3")


def gpt2_byte_symbols():
    """GPT-2's byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


class ReferenceQwenBPE:
    """Plain-Python Qwen2 slow tokenizer: NFC, special-token split, regex pre-tokenizer, byte-level BPE."""

    def __init__(self, qwen_dir, specials):
        self.vocab = json.loads((qwen_dir / "vocab.json").read_text(encoding="utf-8"))
        lines = (qwen_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
        self.ranks = {tuple(line.split()): rank for rank, line in enumerate(lines) if line}
        self.specials = specials
        longest_first = sorted(specials, key=len, reverse=True)
        self.special_split = regex.compile("(" + "|".join(map(regex.escape, longest_first)) + ")")
        self.bytes_table = gpt2_byte_symbols()

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            rank, _ = min(pairs)
            if rank == float("inf"):
                break
            best = next(p for p in zip(parts, parts[1:]) if self.ranks.get(p) == rank)
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text):
        ids = []
        for i, chunk in enumerate(self.special_split.split(text)):
            if i % 2:
                ids.append(self.specials[chunk])
                continue
            for piece in REFERENCE_PRETOKENIZE.findall(unicodedata.normalize("NFC", chunk)):
                symbols = "".join(self.bytes_table[b] for b in piece.encode("utf-8"))
                ids.extend(self.vocab[s] for s in self.bpe(symbols))
        return ids


def test_added_token_lists_have_spec_shape():
    assert len(CV2_ADDED_TOKENS) == 17 and len(set(CV2_ADDED_TOKENS)) == 17
    assert len(CV3_ADDED_TOKENS) == 278 and len(set(CV3_ADDED_TOKENS)) == 278
    assert CV3_ADDED_TOKENS[:17] == CV2_ADDED_TOKENS
    assert CV3_ADDED_TOKENS[17] == "<|endofsystem|>"
    assert CV3_ADDED_TOKENS[18:22] == ("[AA]", "[AA0]", "[AA1]", "[AA2]")
    assert CV3_ADDED_TOKENS[101] == "[ZH]" and CV3_ADDED_TOKENS[102] == "[a]"
    assert CV3_ADDED_TOKENS[-3:] == ("[ǘ]", "[ǚ]", "[ǜ]")


def test_official_ids(tokenizer):
    for token, expected in SPEC_IDS.items():
        assert tokenizer.token_to_id(token) == expected, token
    assert [tokenizer.token_to_id(t) for t in CV3_ADDED_TOKENS] == list(range(151646, 151646 + 278))
    assert tokenizer.vocab_size == 151924
    assert tokenizer.added_tokens == CV3_ADDED_TOKENS


def test_cosyvoice2_version_stops_after_mn(qwen_dir):
    cv2 = TextTokenizer.from_dir(qwen_dir, "cosyvoice2")
    assert cv2.token_to_id("[mn]") == 151662
    assert cv2.vocab_size == 151663
    with pytest.raises(KeyError):
        cv2.token_to_id("<|endofsystem|>")
    assert 151664 not in cv2.encode("[AA]")


@pytest.mark.parametrize("text", [
    "Hello world, this is a test of the text to speech system.",
    "你好，世界！今天天气很好，我们一起去公园散步吧。",
    "Mixed 中文 and English, with numbers 12345 and emoji 😀.\nSecond line\ttab.",
    "  leading spaces, It's I'LL we'RE  ",
])
def test_round_trip_and_real_merges(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # merges apply, not one token per byte
    assert max(ids) < 151643  # ordinary text yields base-vocabulary tokens only


def test_added_tokens_matched_literally(tokenizer):
    ids = tokenizer.encode("你好[breath]世界")
    assert ids.count(151647) == 1
    assert ids == tokenizer.encode("你好") + [151647] + tokenizer.encode("世界")
    assert 151647 not in tokenizer.encode("你好[breath世界 breath]")
    prompt = tokenizer.encode("You are a helpful assistant.<|endofprompt|>对报道[j][ǐ]予好评。")
    assert prompt.count(151646) == 1 and [151797, 151913] == prompt[prompt.index(151797):prompt.index(151797) + 2]


def test_no_bos_or_eos(tokenizer):
    assert tokenizer.encode("") == []
    ids = tokenizer.encode("hello")
    assert ids and max(ids) < 151643
    assert tokenizer.encode("<|endoftext|>hello") == [151643] + ids


def test_decode_skips_special_tokens_by_default(tokenizer):
    ids = tokenizer.encode("A[breath]B<|endofprompt|>")
    assert tokenizer.decode(ids) == "AB"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "A[breath]B<|endofprompt|>"


def test_matches_plain_python_reference(tokenizer, qwen_dir):
    specials = {t: 151643 + i for i, t in enumerate(("<|endoftext|>", "<|im_start|>", "<|im_end|>") + CV3_ADDED_TOKENS)}
    reference = ReferenceQwenBPE(qwen_dir, specials)
    rng = random.Random(0)
    alphabet = (list("abcdefgh XYZ,.!?'\"\n\r\t  0123456789你好世界天气的。，！？、（）《》ａ１éǐü😀ガ")
                + ["[breath]", "<strong>", "</strong>", "[AA1]", "[j]", "[ǐ]", "<|endofprompt|>", "<|im_end|>",
                   "'s", "'LL", "i\u0301", "[AA", "breath]", "the ", " you", "我们"])
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25))) for _ in range(300)]
    for text in texts:
        assert tokenizer.encode(text) == reference.encode(text), text


def test_pre_tokenizer_boundaries_with_extra_merges(qwen_dir, tmp_path):
    """Merges that would cross Qwen's pre-token boundaries must not apply; ones inside a piece must."""
    vocab = json.loads((qwen_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (qwen_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    extra = [("'", "L"), ("L", "a"), ("'L", "L"), ("1", "2"), ("Ġ", "Ġ"), ("ĠĠ", "Ġ"), ("Ċ", "Ċ"), ("!", "Ċ"), ("Ġ", "!")]
    fillers = sorted((i, t) for t, i in vocab.items() if "\u2400" in t)
    for (filler_id, filler), (left, right) in zip(fillers, extra):
        del vocab[filler]
        vocab.setdefault(left + right, filler_id)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = [merges[0]] + [f"{left} {right}" for left, right in extra] + merges[1:]
    (tmp_path / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_bytes((qwen_dir / "tokenizer_config.json").read_bytes())
    tokenizer = TextTokenizer.from_dir(tmp_path)
    assert tokenizer.encode("'LLa") == [vocab["'LL"], vocab["a"]]  # the case-insensitive contraction is a piece
    assert vocab["12"] not in tokenizer.encode("12")  # every digit is its own piece
    reference = ReferenceQwenBPE(tmp_path, {"<|endoftext|>": 151643})
    for text in ("I'LLama go", "x12y 123", "a   b", "a \n\n b", "a\n\nb", "hi!\n\nyo ! !", "WE'RE   12!!\n", "\n\n\n"):
        assert tokenizer.encode(text) == reference.encode(text), text


def test_fillers_are_never_produced(tokenizer, qwen_dir):
    vocab = json.loads((qwen_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 151643 and sorted(vocab.values()) == list(range(151643))
    first_filler = min(i for token, i in vocab.items() if "\u2400" in token)
    assert 256 + 300 <= first_filler  # a few hundred merges before the fillers
    text = "".join(chr(c) for c in range(32, 0x2500)) + "你好世界今天天气很好" * 3
    assert max(tokenizer.encode(text)) < first_filler


def test_tiny_tokenizer_is_deterministic(tmp_path):
    first, second = write_tiny_tokenizer(tmp_path / "a"), write_tiny_tokenizer(tmp_path / "b")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert not (first / "tokenizer.json").exists()


def test_tokenizer_json_folder_gives_same_ids(tokenizer, qwen_dir, tmp_path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = json.loads((qwen_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (qwen_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]]
    base = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    base.normalizer = normalizers.NFC()
    base.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(REFERENCE_PRETOKENIZE.pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    base.decoder = decoders.ByteLevel()
    base.add_special_tokens([AddedToken(t, normalized=False, special=True)
                             for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    base.save(str(tmp_path / "tokenizer.json"))
    from_json = TextTokenizer.from_dir(tmp_path)
    for text in ("Hello world, 你好[breath]世界。", "You are a helpful assistant.<|endofprompt|>[AA1][j][ǐ]"):
        assert from_json.encode(text) == tokenizer.encode(text)
        assert from_json.decode(from_json.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    assert from_json.token_to_id("[ǜ]") == 151923


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt"])
def test_missing_file_names_it(qwen_dir, tmp_path, missing):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        if name != missing:
            (tmp_path / name).write_bytes((qwen_dir / name).read_bytes())
    with pytest.raises(ModelFolderError, match=missing):
        TextTokenizer.from_dir(tmp_path)


def test_corrupt_files_name_them(qwen_dir, tmp_path):
    (tmp_path / "merges.txt").write_bytes((qwen_dir / "merges.txt").read_bytes())
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFolderError, match="vocab.json"):
        TextTokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}), encoding="utf-8")
    with pytest.raises(ModelFolderError, match="merges.txt"):
        TextTokenizer.from_dir(tmp_path)


def test_wrong_base_size_is_rejected(tmp_path):
    small_vocab = {chr(c): i for i, c in enumerate(range(ord("a"), ord("z") + 1))}
    (tmp_path / "vocab.json").write_text(json.dumps(small_vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ModelFolderError, match="151646"):
        TextTokenizer.from_dir(tmp_path)


def test_unknown_version_and_token(qwen_dir, tokenizer):
    with pytest.raises(ValueError):
        TextTokenizer.from_dir(qwen_dir, "cosyvoice1")
    with pytest.raises(KeyError):
        tokenizer.token_to_id("<|zh|>")

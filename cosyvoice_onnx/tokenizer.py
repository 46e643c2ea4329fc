"""Qwen2 BPE text tokenizer with the CosyVoice 2/3 added tokens, built on HF `tokenizers` alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from cosyvoice_onnx.errors import ModelFolderError

CV2_ADDED_TOKENS: tuple[str, ...] = (
    "<|endofprompt|>", "[breath]", "<strong>", "</strong>", "[noise]", "[laughter]", "[cough]", "[clucking]",
    "[accent]", "[quick_breath]", "<laughter>", "</laughter>", "[hissing]", "[sigh]", "[vocalized-noise]",
    "[lipsmack]", "[mn]",
)

ARPABET_TOKENS: tuple[str, ...] = tuple(f"[{phone}]" for phone in (
    "AA AA0 AA1 AA2 AE AE0 AE1 AE2 AH AH0 AH1 AH2 AO AO0 AO1 AO2 AW AW0 AW1 AW2 AY AY0 AY1 AY2 B CH D DH "
    "EH EH0 EH1 EH2 ER ER0 ER1 ER2 EY EY0 EY1 EY2 F G HH IH IH0 IH1 IH2 IY IY0 IY1 IY2 JH K L M N NG "
    "OW OW0 OW1 OW2 OY OY0 OY1 OY2 P R S SH T TH UH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
).split())

PINYIN_TOKENS: tuple[str, ...] = tuple(f"[{unit}]" for unit in (
    "a ai an ang ao b c ch d e ei en eng f g h i ian in ing iu ià iàn iàng iào iá ián iáng iáo iè ié iòng ióng "
    "iù iú iā iān iāng iāo iē iě iōng iū iǎ iǎn iǎng iǎo iǒng iǔ j k l m n o ong ou p q r s sh t u uang ue un "
    "uo uà uài uàn uàng uá uái uán uáng uè ué uì uí uò uó uā uāi uān uāng uē uě uī uō uǎ uǎi uǎn uǎng uǐ uǒ "
    "vè w x y z zh à ài àn àng ào á ái án áng áo è èi èn èng èr é éi én éng ér ì ìn ìng í ín íng ò òng òu "
    "ó óng óu ù ùn ú ún ā āi ān āng āo ē ēi ēn ēng ě ěi ěn ěng ěr ī īn īng ō ōng ōu ū ūn ǎ ǎi ǎn ǎng ǎo "
    "ǐ ǐn ǐng ǒ ǒng ǒu ǔ ǔn ǘ ǚ ǜ"
).split())

CV3_ADDED_TOKENS: tuple[str, ...] = CV2_ADDED_TOKENS + ("<|endofsystem|>",) + ARPABET_TOKENS + PINYIN_TOKENS

ADDED_TOKENS_BY_VERSION = {"cosyvoice2": CV2_ADDED_TOKENS, "cosyvoice3": CV3_ADDED_TOKENS}
# Every release's added tokens, in first-seen order.
ALL_ADDED_TOKENS: tuple[str, ...] = tuple(dict.fromkeys(t for ts in ADDED_TOKENS_BY_VERSION.values() for t in ts))

QWEN_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_BASE_VOCAB_SIZE = 151643
# llm.py hard-codes this id; any other value means the folder's tokenizer is not the CosyVoice one.
ENDOFPROMPT_ID = 151646

QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _qwen2_pipeline(model: BPE) -> Tokenizer:
    """The tokenizer transformers' Qwen2 slow->fast converter builds around a BPE model."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _bpe_model(vocab: dict[str, int], merges: list[tuple[str, str]]) -> BPE:
    return BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
               end_of_word_suffix="", fuse_unk=False, byte_fallback=False)


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"Tokenizer file missing: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"Tokenizer file {path} is unreadable or not valid JSON: {err}") from None
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise ModelFolderError(f"Tokenizer file {path} is not a token->id JSON object")
    return vocab


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ModelFolderError(f"Tokenizer file missing: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"Tokenizer file {path} is unreadable: {err}") from None
    merges = []
    for index, line in enumerate(lines):
        line = line.strip()
        # Same skipping rule as transformers' Qwen2Tokenizer: a leading "#version:" header and blank lines.
        if not line or (index == 0 and line.startswith("#version:")):
            continue
        pair = line.split()
        if len(pair) != 2:
            raise ModelFolderError(f"Tokenizer file {path}, line {index + 1}: expected two symbols, got {line!r}")
        merges.append((pair[0], pair[1]))
    return merges


def _read_config_added_tokens(path: Path) -> list[tuple[int, AddedToken]]:
    """Added tokens declared in tokenizer_config.json, sorted by id (transformers adds them in that order)."""
    if not path.exists():
        return []
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        declared = config.get("added_tokens_decoder", {}) or {}
        tokens = []
        for token_id, spec in declared.items():
            tokens.append((int(token_id), AddedToken(
                spec["content"], single_word=spec.get("single_word", False), lstrip=spec.get("lstrip", False),
                rstrip=spec.get("rstrip", False), normalized=spec.get("normalized", False),
                special=spec.get("special", True))))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(f"Tokenizer file {path} is unreadable or malformed: {err}") from None
    return sorted(tokens, key=lambda item: item[0])


def _load_base_tokenizer(qwen_dir: Path) -> Tokenizer:
    tokenizer_json = qwen_dir / "tokenizer.json"
    if tokenizer_json.exists():
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as err:  # tokenizers raises a bare Exception for any parse failure
            raise ModelFolderError(f"Tokenizer file {tokenizer_json} could not be loaded: {err}") from None
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer
    vocab_path, merges_path = qwen_dir / "vocab.json", qwen_dir / "merges.txt"
    vocab, merges = _read_vocab(vocab_path), _read_merges(merges_path)
    try:
        model = _bpe_model(vocab, merges)
    except Exception as err:  # e.g. a merge whose symbols are not in the vocabulary
        raise ModelFolderError(f"Tokenizer files {vocab_path} and {merges_path} do not fit together: {err}") from None
    tokenizer = _qwen2_pipeline(model)
    config_path = qwen_dir / "tokenizer_config.json"
    for token_id, token in _read_config_added_tokens(config_path):
        tokenizer.add_tokens([token])
        if tokenizer.token_to_id(token.content) != token_id:
            raise ModelFolderError(
                f"{config_path} declares {token.content!r} as id {token_id}, but the vocabulary in {vocab_path} "
                f"places it at {tokenizer.token_to_id(token.content)}")
    return tokenizer


class TextTokenizer:
    """Encodes text to the ids the CosyVoice LLM was trained on (no BOS/EOS; added tokens matched literally)."""

    def __init__(self, tokenizer: Tokenizer, added_tokens: Iterable[str]):
        self._tokenizer = tokenizer
        self._added_tokens = tuple(added_tokens)

    @classmethod
    def from_dir(cls, qwen_dir: Path, version: str = "cosyvoice3") -> "TextTokenizer":
        if version not in ADDED_TOKENS_BY_VERSION:
            raise ValueError(f"Unknown tokenizer version {version!r}; "
                             f"expected one of {sorted(ADDED_TOKENS_BY_VERSION)}")
        qwen_dir = Path(qwen_dir)
        if not qwen_dir.is_dir():
            raise ModelFolderError(f"Qwen tokenizer folder missing: {qwen_dir}")
        tokenizer = _load_base_tokenizer(qwen_dir)
        added = ADDED_TOKENS_BY_VERSION[version]
        # Same order as the official add_special_tokens call: eos/pad, then the im_* pair, then the CosyVoice list;
        # tokens already present keep their ids, new ones get consecutive ids.
        tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                      for token in QWEN_SPECIAL_TOKENS + added])
        found = tokenizer.token_to_id(CV2_ADDED_TOKENS[0])
        if found != ENDOFPROMPT_ID:
            raise ModelFolderError(
                f"Tokenizer in {qwen_dir} puts <|endofprompt|> at id {found}, expected {ENDOFPROMPT_ID}: "
                "the base vocabulary must hold 151643 tokens followed by <|endoftext|>, <|im_start|>, <|im_end|>")
        return cls(tokenizer, added)

    @property
    def added_tokens(self) -> tuple[str, ...]:
        return self._added_tokens

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        # Official decode skips special tokens (yaml skip_special_tokens: True), which drops every CosyVoice marker.
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def other_release_tokens(self, text: str) -> list[str]:
        """CosyVoice tokens of another release that `text` spells out and this tokenizer lacks, so it would
        read them as plain characters (e.g. CosyVoice3's pinyin `[j]` on a CosyVoice2 model)."""
        known = set(self._added_tokens)
        return [token for token in ALL_ADDED_TOKENS if token not in known and token in text]

    def token_to_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(f"Token {token!r} is not in the text tokenizer vocabulary")
        return token_id


_TINY_CORPUS = """\
You are a helpful assistant. Please say a sentence as loudly as possible.
Please say a sentence in a very soft voice. The quick brown fox jumps over the lazy dog.
Hello world, this is a test of the text to speech system. It is a good day, and we are going home.
I have three apples and two pears; what do you have? There are many things that we can do with it.
My name is Anna, and I would like to tell you something about the weather in the city today.
We can't stop now. They're not here, but I'll be there in a minute. She said: "what's going on?"
希望你以后能够做的比我还好呦。收到好友从远方寄来的生日礼物，那份意外的惊喜与深深的祝福让我心中充满了甜蜜的快乐。
八百标兵奔北坡，北坡炮兵并排跑。今天天气很好，我们一起去公园散步吧。你好，世界！这是一个语音合成的测试。
请用尽可能慢地语速说一句话。请用尽可能快地语速说一句话。请非常开心地说一句话。请非常伤心地说一句话。
我想体验一下小猪佩奇风格，可以吗？你可以尝试用机器人的方式解答吗？在他讲述那个荒诞故事的过程中，他突然停下来。
"""
_TINY_MERGE_COUNT = 400


def write_tiny_tokenizer(qwen_dir: Path) -> Path:
    """Write a small Qwen-style tokenizer (vocab.json, merges.txt, tokenizer_config.json) with the official ids.

    The base vocabulary has exactly 151643 entries so that <|endoftext|>=151643 and the CosyVoice tokens land on
    their real ids: the 256 byte symbols, then merges learned from a short English/Chinese text, then fillers
    that BPE can never produce (they contain a character outside the byte-level alphabet).
    """
    qwen_dir = Path(qwen_dir)
    qwen_dir.mkdir(parents=True, exist_ok=True)
    byte_symbols = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(byte_symbols) + _TINY_MERGE_COUNT, min_frequency=1,
                                  show_progress=False, initial_alphabet=byte_symbols)
    learner = _qwen2_pipeline(BPE())
    learner.train_from_iterator(_TINY_CORPUS.splitlines(), trainer=trainer)
    merges = [tuple(pair) for pair in json.loads(learner.to_str())["model"]["merges"]]

    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_symbols))}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    filler_index = 0
    while len(vocab) < QWEN_BASE_VOCAB_SIZE:
        vocab[f"\u2400{filler_index}"] = len(vocab)
        filler_index += 1

    config = {
        "added_tokens_decoder": {
            str(QWEN_BASE_VOCAB_SIZE + offset): {"content": token, "lstrip": False, "normalized": False,
                                                 "rstrip": False, "single_word": False, "special": True}
            for offset, token in enumerate(QWEN_SPECIAL_TOKENS)
        },
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer", "clean_up_tokenization_spaces": False,
    }
    (qwen_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (qwen_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges), encoding="utf-8")
    (qwen_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return qwen_dir

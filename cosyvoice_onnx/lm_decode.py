"""The speech-token decoding loop shared by every LM backend: length limits, stop ids and the CV3 silence filter."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .config import LLMConfig
from .errors import InputError
from .sampling import Sampler
from .stages import LanguageModelStage

# "official": below min_len only cfg.min_len_mask_id is masked (6561, which for CV3 is sos, not eos, so the
# official model can stop early); "correct": every stop id is masked below min_len.
EOS_MASK_MODES = ("official", "correct")


def length_limits(num_text_tokens: int, cfg: LLMConfig) -> tuple[int, int]:
    """(min_len, max_len) from the target text length; the prompt text does not count."""
    return int(num_text_tokens * cfg.min_token_text_ratio), int(num_text_tokens * cfg.max_token_text_ratio)


def _as_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def iter_speech_tokens(lm: LanguageModelStage, text_ids, prompt_text_ids, prompt_speech_ids, cfg: LLMConfig,
                       sampler: Sampler, *, min_len: int | None = None, max_len: int | None = None,
                       exact_len: int | None = None, eos_mask_mode: str = "official",
                       require_token: int | None = None) -> Iterator[int]:
    """Speech tokens one by one as the LM produces them (what streaming consumes).

    The LM sees [sos] + prompt_text + text + [task_id] + prompt_speech, then samples until a stop id (not
    emitted) or max_len steps (default int(20 * len(text_ids))); below min_len (default int(2 * len(text_ids)))
    stop ids are masked per `eos_mask_mode`. When cfg.silent_tokens is non-empty, a silent token that extends a
    run beyond cfg.max_silent_run is not emitted, though the LM still conditions on it.

    exact_len=N (duration control) overrides min_len/max_len: every stop id is masked and decoding ends after
    exactly N tokens. The silence filter is off then, because dropping tokens would break the count.

    require_token: an id (CV3: <|endofprompt|>) that must occur in prompt_text + text. Input errors are
    raised here, before the first token is requested.
    """
    text = _as_ids(text_ids)
    text_all = np.concatenate([_as_ids(prompt_text_ids), text])
    if require_token is not None and not np.any(text_all == require_token):
        raise InputError(
            f"the text sent to the language model lacks the <|endofprompt|> token (id {require_token}); "
            "CosyVoice3 needs it in the prompt text, the instruction or the text, "
            "e.g. 'You are a helpful assistant.<|endofprompt|>'")
    if eos_mask_mode not in EOS_MASK_MODES:
        raise InputError(f"unknown eos_mask_mode {eos_mask_mode!r}; choose one of {', '.join(EOS_MASK_MODES)}")
    all_stop_ids = tuple(cfg.stop_token_ids)
    if exact_len is not None:
        if exact_len < 0:
            raise InputError(f"exact_len must be >= 0, got {exact_len}")
        return _decode(lm, text_all, _as_ids(prompt_speech_ids), cfg, sampler, steps=int(exact_len),
                       early_mask=all_stop_ids, masked_steps=int(exact_len), silent_ids=frozenset())
    default_min, default_max = length_limits(len(text), cfg)
    early_mask = (cfg.min_len_mask_id,) if eos_mask_mode == "official" else all_stop_ids
    return _decode(lm, text_all, _as_ids(prompt_speech_ids), cfg, sampler,
                   steps=default_max if max_len is None else int(max_len), early_mask=early_mask,
                   masked_steps=default_min if min_len is None else int(min_len),
                   silent_ids=frozenset(cfg.silent_tokens))


def _decode(lm: LanguageModelStage, text_all: np.ndarray, prompt_speech: np.ndarray, cfg: LLMConfig,
            sampler: Sampler, *, steps: int, early_mask: tuple[int, ...], masked_steps: int,
            silent_ids: frozenset[int]) -> Iterator[int]:
    if steps <= 0:
        return
    stop_ids = frozenset(cfg.stop_token_ids)
    logits, cache = lm.prefill(text_all, prompt_speech)
    decoded: list[int] = []
    silent_run = 0
    for step in range(steps):
        if step:
            logits, cache = lm.step(decoded[-1], cache)
        token = int(sampler.sample(logits, decoded, early_mask if step < masked_steps else ()))
        if token in stop_ids:
            return
        decoded.append(token)
        silent_run = silent_run + 1 if token in silent_ids else 0
        if silent_run <= cfg.max_silent_run:
            yield token


def decode_speech_tokens(lm: LanguageModelStage, text_ids, prompt_text_ids, prompt_speech_ids, cfg: LLMConfig,
                         sampler: Sampler, *, min_len: int | None = None, max_len: int | None = None,
                         exact_len: int | None = None, eos_mask_mode: str = "official",
                         require_token: int | None = None,
                         on_token: Callable[[int], None] | None = None) -> list[int]:
    """All speech tokens of `iter_speech_tokens` as a list; `on_token` is called with each as it arrives."""
    tokens: list[int] = []
    for token in iter_speech_tokens(lm, text_ids, prompt_text_ids, prompt_speech_ids, cfg, sampler,
                                    min_len=min_len, max_len=max_len, exact_len=exact_len,
                                    eos_mask_mode=eos_mask_mode, require_token=require_token):
        tokens.append(token)
        if on_token is not None:
            on_token(token)
    return tokens

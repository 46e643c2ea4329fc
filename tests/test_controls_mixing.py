"""Emotion/timbre prompt splicing: endpoints, self-mix identity, word-boundary cuts and proportional tokens."""

import numpy as np
import pytest

from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.frontend import PromptFeatures
from cosyvoice_onnx.mixing import head_cut, mix_prompts, single_prompt

SYSTEM = "You are a helpful assistant.<|endofprompt|>"


def clip(n_tokens, transcript, seed):
    rng = np.random.default_rng(seed)
    return PromptFeatures(rng.integers(0, 6561, (1, n_tokens)), rng.standard_normal((1, 2 * n_tokens, 80)).astype(
        np.float32), rng.standard_normal((1, 192)).astype(np.float32), transcript)


A = clip(60, "the quick brown fox jumps over the lazy dog", 0)
B = clip(90, "收到好友从远方寄来的生日礼物，那份意外的惊喜", 1)


def same_plan(p, q):
    return np.array_equal(p.lm_tokens, q.lm_tokens) and p.transcript == q.transcript and p.flow is q.flow


def test_weight_zero_is_the_timbre_clip_alone():
    assert same_plan(mix_prompts(A, B, 0.0), single_prompt(A))


def test_weight_one_is_the_emotion_lm_prompt_with_the_timbre_flow():
    plan = mix_prompts(A, B, 1.0)
    assert np.array_equal(plan.lm_tokens, B.speech_tokens.reshape(-1)) and plan.transcript == B.transcript
    assert plan.flow is A


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.37, 0.5, 0.81, 1.0])
def test_mixing_a_clip_with_itself_is_the_clip(weight):
    assert same_plan(mix_prompts(A, A, weight), single_prompt(A))
    prefixed = PromptFeatures(B.speech_tokens, B.mel, B.embedding, SYSTEM + B.transcript)
    assert same_plan(mix_prompts(prefixed, prefixed, weight), single_prompt(prefixed))


def test_splice_cuts_at_word_boundaries_with_proportional_tokens():
    plan = mix_prompts(A, B, 0.5)
    cut_a = head_cut(A.transcript, 0.5)
    cut_b = head_cut(B.transcript, 0.5)
    assert A.transcript[cut_a - 1] == " "              # after a whole word
    assert plan.transcript == A.transcript[:cut_a] + B.transcript[cut_b:]
    tokens_a = round(60 * cut_a / len(A.transcript))
    tokens_b = round(90 * cut_b / len(B.transcript))
    expected = np.concatenate([A.speech_tokens[0, :tokens_a], B.speech_tokens[0, tokens_b:]])
    assert np.array_equal(plan.lm_tokens, expected)
    assert plan.flow is A


def test_more_weight_means_more_of_the_emotion_clip():
    plans = [mix_prompts(A, B, w) for w in np.linspace(0, 1, 11)]
    from_b = [int(np.isin(p.lm_tokens, B.speech_tokens).sum()) for p in plans]
    assert from_b[0] == 0 and from_b[-1] == 90
    assert all(x <= y for x, y in zip(from_b, from_b[1:]))
    assert plans[0].transcript == A.transcript and plans[-1].transcript == B.transcript


def test_system_prefix_is_kept_once():
    a = PromptFeatures(A.speech_tokens, A.mel, A.embedding, SYSTEM + A.transcript)
    b = PromptFeatures(B.speech_tokens, B.mel, B.embedding, SYSTEM + B.transcript)
    plan = mix_prompts(a, b, 0.5)
    assert plan.transcript.startswith(SYSTEM) and plan.transcript.count("<|endofprompt|>") == 1


def test_missing_transcripts_and_bad_weights():
    untranscribed = PromptFeatures(B.speech_tokens, B.mel, B.embedding, "")
    assert same_plan(mix_prompts(A, untranscribed, 0.0), single_prompt(A))
    with pytest.raises(InputError, match="emotion clip"):
        mix_prompts(A, untranscribed, 0.5)
    with pytest.raises(InputError, match="timbre clip"):
        mix_prompts(PromptFeatures(A.speech_tokens, A.mel, A.embedding, ""), B, 0.5)
    with pytest.raises(InputError):
        mix_prompts(A, B, 1.5)

"""RAS samplers against a hand-written reference, and the shared LM decoding loop on scripted stub LMs."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from cosyvoice_onnx.config import LLMConfig
from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.lm_decode import decode_speech_tokens, iter_speech_tokens, length_limits
from cosyvoice_onnx.sampling import (GreedySampler, NumpyRasSampler, TorchRasSampler, make_sampler, nucleus_size)

CFG = LLMConfig()
V = CFG.speech_vocab_size
EOS, SOS = CFG.eos, CFG.sos
END_OF_PROMPT = 151646


def reference_ras(logits, decoded, mask_ids, gen, top_p=0.8, top_k=25, win_size=10, tau_r=0.1):
    """RAS as described in the spec, written with a per-element loop over torch scalars."""
    logp = torch.tensor(logits).log_softmax(dim=0)
    for i in mask_ids:
        logp[i] = -float("inf")
    values, order = logp.softmax(dim=0).sort(descending=True, stable=True)
    kept, ids, total = [], [], 0.0
    for value, index in zip(values[: top_k + 1], order[: top_k + 1]):  # the walk never passes top_k
        if not (total < top_p and len(kept) < top_k):
            break
        total = total + value
        kept.append(value)
        ids.append(int(index))
    token = ids[int(torch.stack(kept).multinomial(1, replacement=True, generator=gen))]
    if sum(t == token for t in decoded[-win_size:]) >= win_size * tau_r:
        logp[token] = -float("inf")
        token = int(logp.softmax(dim=0).multinomial(1, replacement=True, generator=gen))
    return token


def probs_to_logits(probs, size=V):
    logits = np.full(size, -40.0, dtype=np.float32)
    logits[: len(probs)] = np.log(np.maximum(np.asarray(probs, dtype=np.float64), 1e-12))
    return logits


def test_torch_ras_equals_reference_with_same_generator():
    rng = np.random.default_rng(0)
    sampler, gen = TorchRasSampler(seed=11), torch.Generator().manual_seed(11)
    decoded_ours, decoded_ref, fallbacks = [], [], 0
    for step in range(120):
        logits = rng.normal(0, 1, V).astype(np.float32)
        logits[rng.integers(0, 30, 3)] += (12.0, 4.0, 2.0)[step % 3]
        mask = (SOS,) if step < 30 else ()
        ours, ref = sampler.sample(logits, decoded_ours, mask), reference_ras(logits, decoded_ref, mask, gen)
        assert ours == ref
        fallbacks += int(np.argmax(logits)) in decoded_ours[-10:] and ours != int(np.argmax(logits))
        decoded_ours.append(ours)
        decoded_ref.append(ref)
    assert fallbacks > 5  # the repetition path was exercised


@pytest.mark.parametrize("make", [lambda s: TorchRasSampler(s), lambda s: NumpyRasSampler(s)], ids=["torch", "numpy"])
class TestRasRules:
    def test_peaked_distribution_yields_argmax(self, make):
        logits = probs_to_logits([0.01, 0.95, 0.04])
        assert {make(seed).sample(logits, [], ()) for seed in range(20)} == {1}

    def test_nucleus_obeys_top_p(self, make):
        # cumulative 0.5, 0.75, 0.875: the token crossing 0.8 is kept, the next one is not.
        logits = probs_to_logits([0.5, 0.25, 0.125, 0.0625, 0.0625])
        sampler = make(1)
        draws = np.array([sampler.sample(logits, [], ()) for _ in range(3000)])
        assert set(draws) == {0, 1, 2}
        np.testing.assert_allclose(np.bincount(draws, minlength=3) / 3000, [4 / 7, 2 / 7, 1 / 7], atol=0.03)

    def test_nucleus_obeys_top_k(self, make):
        # Uniform scores: the stable sort keeps index order, so only the first top_k ids can be drawn.
        sampler = make(2)
        draws = {sampler.sample(np.zeros(V, np.float32), [], ()) for _ in range(2000)}
        assert draws == set(range(25))

    def test_repetition_falls_back_to_full_distribution(self, make):
        logits = probs_to_logits([0.0, 0.0, 0.0, 0.6, 0.0, 0.0, 0.0, 0.399])
        sampler = make(3)
        assert {sampler.sample(logits, [3], ()) for _ in range(50)} == {7}
        assert {sampler.sample(logits, [3] + [0] * 10, ()) for _ in range(50)} == {3, 7}  # 3 left the window

    def test_mask_ids_are_never_drawn(self, make):
        logits = probs_to_logits([0.3, 0.6, 0.1])
        sampler = make(4)
        assert 1 not in {sampler.sample(logits, [], (1,)) for _ in range(200)}

    def test_same_seed_same_stream(self, make):
        rng = np.random.default_rng(5)
        seq = [rng.normal(0, 2, V).astype(np.float32) for _ in range(40)]
        runs = []
        for seed in (7, 7, 8):
            sampler, decoded = make(seed), []
            for logits in seq:
                decoded.append(sampler.sample(logits, decoded, ()))
            runs.append(decoded)
        assert runs[0] == runs[1] and runs[0] != runs[2]


def test_nucleus_size_boundary_rules():
    assert nucleus_size(np.array([0.8, 0.1, 0.1], np.float32), 0.8, 25) == 1
    assert nucleus_size(np.array([0.7, 0.2, 0.1], np.float32), 0.8, 25) == 2
    assert nucleus_size(np.array([0.7, 0.2, 0.1], np.float32), 0.8, 1) == 1
    # float32(0.7) < 0.7 in float64 but not in float32; the official comparison runs in float32.
    assert nucleus_size(np.array([0.7, 0.2, 0.1], np.float32), 0.7, 25) == 1


def test_greedy_and_make_sampler():
    logits = probs_to_logits([0.2, 0.5, 0.3])
    assert GreedySampler().sample(logits, [], ()) == 1
    assert GreedySampler().sample(logits, [], (1,)) == 2
    assert isinstance(make_sampler("auto", 0, CFG), TorchRasSampler)
    assert isinstance(make_sampler("numpy", 0, CFG), NumpyRasSampler)
    assert isinstance(make_sampler("greedy", 0, CFG), GreedySampler)
    with pytest.raises(InputError, match="unknown sampler"):
        make_sampler("beam", 0, CFG)


def test_torch_free_path():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from cosyvoice_onnx import lm_decode, sampling\n"
            "from cosyvoice_onnx.config import LLMConfig\n"
            "assert type(sampling.make_sampler('auto', 0, LLMConfig())).__name__ == 'NumpyRasSampler'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- decoding loop


class ScriptedLM:
    """A LanguageModelStage whose logits are a function of the step; it records what it was fed."""

    backend = "stub"

    def __init__(self, logits_at):
        self.logits_at = logits_at
        self.prefill_inputs = None
        self.fed: list[int] = []

    def prefill(self, text_ids, prompt_speech_ids):
        self.prefill_inputs = (list(text_ids), list(prompt_speech_ids))
        return self.logits_at(0), 0

    def step(self, token_id, cache):
        self.fed.append(token_id)
        return self.logits_at(cache + 1), cache + 1


def eos_likely(step):
    """sos (the id the official loop masks) first, eos second, speech token 100 third."""
    logits = np.zeros(V, np.float32)
    logits[[SOS, EOS, 100]] = (10.0, 9.0, 5.0)
    return logits


def never_stops(step):
    logits = np.zeros(V, np.float32)
    logits[100 + step % 7] = 10.0
    return logits


def scripted(sequence):
    def logits_at(step):
        logits = np.zeros(V, np.float32)
        logits[sequence[step] if step < len(sequence) else EOS] = 10.0
        return logits
    return logits_at


def decode(lm, text=(5, 6, 7), prompt_text=(END_OF_PROMPT,), prompt_speech=(3, 4), cfg=CFG, sampler=None, **kw):
    return decode_speech_tokens(lm, np.array(text), np.array(prompt_text), np.array(prompt_speech), cfg,
                                sampler or GreedySampler(), **kw)


def test_official_quirk_stops_before_min_len_correct_mode_does_not():
    assert decode(ScriptedLM(eos_likely)) == []
    tokens = decode(ScriptedLM(eos_likely), eos_mask_mode="correct")
    assert tokens == [100] * length_limits(3, CFG)[0] == [100] * 6


def test_min_len_counts_only_the_target_text():
    tokens = decode(ScriptedLM(eos_likely), prompt_text=(END_OF_PROMPT, 1, 2, 3, 4, 5), eos_mask_mode="correct")
    assert len(tokens) == 6
    assert len(decode(ScriptedLM(eos_likely), eos_mask_mode="correct", min_len=2)) == 2


def test_max_len_caps_decoding():
    lm = ScriptedLM(never_stops)
    assert len(decode(lm)) == 60
    assert len(lm.fed) == 59  # no LM step after the last token
    assert len(decode(ScriptedLM(never_stops), max_len=7)) == 7


@pytest.mark.parametrize("logits_at", [eos_likely, never_stops], ids=["eos-likely", "never-stops"])
@pytest.mark.parametrize("n", [0, 1, 13, 90])
def test_exact_len(logits_at, n):
    lm = ScriptedLM(logits_at)
    assert len(decode(lm, exact_len=n)) == n
    assert len(lm.fed) == max(n - 1, 0)


def test_silent_filter_drops_long_runs_but_lm_sees_them():
    sequence = [1, 1, 1, 1, 1, 1, 1, 2, 50, 2, 2, 2, 2, 2, 2, 2, 60]
    lm = ScriptedLM(scripted(sequence))
    assert decode(lm) == [1, 1, 1, 1, 1, 50, 2, 2, 2, 2, 2, 60]
    assert lm.fed == sequence
    no_filter = LLMConfig(silent_tokens=())
    assert decode(ScriptedLM(scripted(sequence)), cfg=no_filter) == sequence
    assert decode(ScriptedLM(scripted(sequence)), exact_len=len(sequence)) == sequence


def test_sampler_history_includes_dropped_tokens():
    sequence = [1] * 9 + [70]
    seen = []

    class Recording(GreedySampler):
        def sample(self, logits, decoded, mask_ids):
            seen.append(list(decoded))
            return super().sample(logits, decoded, mask_ids)

    decode(ScriptedLM(scripted(sequence)), sampler=Recording())
    assert seen[-1] == sequence  # the call that returned eos saw every produced token


def test_prefill_gets_prompt_text_then_text_and_prompt_speech():
    lm = ScriptedLM(eos_likely)
    decode(lm, text=(5, 6), prompt_text=(9, END_OF_PROMPT), prompt_speech=(3, 4, 8))
    assert lm.prefill_inputs == ([9, END_OF_PROMPT, 5, 6], [3, 4, 8])


def test_missing_end_of_prompt_is_an_input_error_raised_eagerly():
    lm = ScriptedLM(never_stops)
    with pytest.raises(InputError, match="endofprompt"):
        iter_speech_tokens(lm, np.array([5, 6]), np.array([1]), np.array([]), CFG, GreedySampler(),
                           require_token=END_OF_PROMPT)
    assert lm.prefill_inputs is None
    assert decode(ScriptedLM(eos_likely), text=(5, END_OF_PROMPT), prompt_text=(), require_token=END_OF_PROMPT) == []


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="eos_mask_mode"):
        decode(ScriptedLM(eos_likely), eos_mask_mode="strict")
    with pytest.raises(InputError, match="exact_len"):
        decode(ScriptedLM(eos_likely), exact_len=-1)


def test_streaming_is_lazy_and_on_token_sees_every_token():
    lm = ScriptedLM(never_stops)
    tokens = iter_speech_tokens(lm, np.array([5]), np.array([END_OF_PROMPT]), np.array([]), CFG, GreedySampler())
    assert next(tokens) == 100 and lm.fed == []
    assert next(tokens) == 101 and lm.fed == [100]
    seen = []
    assert decode(ScriptedLM(never_stops), on_token=seen.append) == seen and len(seen) == 60


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_seeded_decoding_is_deterministic(kind):
    def noisy(step):
        return np.random.default_rng(step).normal(0, 3, V).astype(np.float32)

    runs = [decode(ScriptedLM(noisy), text=tuple(range(10)), sampler=make_sampler(kind, seed, CFG))
            for seed in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2] and len(runs[0]) > 0

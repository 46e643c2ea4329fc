"""End-to-end behaviour of the PyTorch engine on a tiny synthetic CV3 model."""

import numpy as np
import pytest

from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.prompts import MODES
from cosyvoice_onnx.sampling import make_sampler

TEXT = "Hello world, this is a tiny test of the pipeline."
TRANSCRIPT = "hello there this is a test"


def test_zero_shot_produces_24khz_audio_whose_length_matches_the_tokens(tiny_engine, prompt_wav):
    audio = tiny_engine.synthesize(TEXT, prompt_wav=prompt_wav, prompt_text=TRANSCRIPT, seed=3, exact_len=30)
    assert tiny_engine.sample_rate == 24000
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size == 30 * 2 * 480, "30 tokens -> 60 mel frames -> 28800 samples"
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 0.99 + 1e-6
    assert np.std(audio) > 1e-4, "not silent"


def test_same_seed_same_audio_other_seed_other_audio(tiny_engine, prompt_wav):
    voice = tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT)
    a = tiny_engine.synthesize(TEXT, voice=voice, seed=7, max_len=40)
    b = tiny_engine.synthesize(TEXT, voice=voice, seed=7, max_len=40)
    c = tiny_engine.synthesize(TEXT, voice=voice, seed=8, max_len=40)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_modes_are_chosen_by_inputs_and_build_the_official_prompts(tiny_engine):
    fe = tiny_engine.frontend
    text_ids, prompt_ids = fe.lm_inputs(MODES["zero_shot"], "Hi.", "my transcript", None)
    assert tiny_engine.tokenizer.decode(prompt_ids.tolist(), skip_special_tokens=False) == \
        "You are a helpful assistant.<|endofprompt|>my transcript"
    text_ids, prompt_ids = fe.lm_inputs(MODES["cross_lingual"], "Hi.", None, None)
    assert prompt_ids.size == 0
    assert tiny_engine.tokenizer.decode(text_ids.tolist(), skip_special_tokens=False) == \
        "You are a helpful assistant.<|endofprompt|>Hi."
    text_ids, prompt_ids = fe.lm_inputs(MODES["instruct"], "Hi.", None, "请用四川话表达。")
    assert tiny_engine.tokenizer.decode(prompt_ids.tolist(), skip_special_tokens=False) == \
        "You are a helpful assistant. 请用四川话表达。<|endofprompt|>"


def test_zero_shot_feeds_prompt_speech_to_the_lm_and_cross_lingual_does_not(tiny_engine, prompt_wav):
    seen = []

    class Spy:
        backend = "spy"

        def prefill(self, text_ids, prompt_speech_ids):
            seen.append(len(prompt_speech_ids))
            return np.zeros(tiny_engine.cfg.llm.speech_vocab_size, np.float32), None

        def step(self, token_id, cache):
            return np.zeros(tiny_engine.cfg.llm.speech_vocab_size, np.float32), None

    voice = tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT)
    real = tiny_engine.stages.lm
    tiny_engine.stages.lm = Spy()
    try:
        tiny_engine.synthesize("Hi.", voice=voice, exact_len=2)
        tiny_engine.synthesize("Hi.", voice=voice, prompt_text="", exact_len=2)
        tiny_engine.synthesize("Hi.", voice=voice, instruct="请用四川话表达。", exact_len=2)
    finally:
        tiny_engine.stages.lm = real
    assert seen == [voice.speech_tokens.shape[1], 0, 0]


def test_streaming_chunks_follow_the_official_schedule(tiny_engine, prompt_wav):
    voice = tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT)
    n_tokens = 120
    chunks = list(tiny_engine.synthesize(TEXT, voice=voice, seed=1, stream=True, exact_len=n_tokens))
    p = voice.speech_tokens.shape[1]
    first_hop = 25 + (-p) % 25
    # First chunk: the causal vocoder holds back 8 mel frames of look-ahead.
    assert len(chunks[0]) == 480 * (2 * first_hop - 8)
    assert len(chunks) >= 3
    total = np.concatenate(chunks)
    whole = tiny_engine.synthesize(TEXT, voice=voice, seed=1, exact_len=n_tokens)
    assert total.size == whole.size == n_tokens * 2 * 480


def test_streaming_audio_is_reproduced_by_the_vocoder_over_the_accumulated_mel(tiny_engine, prompt_wav):
    """Earlier chunks never change: re-running the stream's flow calls and one final vocoder pass gives
    the same samples (the CV3 vocoder is causal and its noise fixed)."""
    voice = tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT)
    text_ids, prompt_ids = tiny_engine.frontend.lm_inputs(MODES["zero_shot"], TEXT, TRANSCRIPT, None)
    tokens = tiny_engine.generate_tokens(text_ids, prompt_ids, voice.speech_tokens.reshape(-1),
                                         make_sampler("torch", 5, tiny_engine.cfg.llm), exact_len=90)
    chunks = list(tiny_engine.token2wav.stream(iter(tokens), voice.speech_tokens, voice.mel, voice.embedding))
    p = voice.speech_tokens.shape[1]
    hop = 25 + (-p) % 25
    mel1 = tiny_engine.tokens_to_mel(tokens[:hop + 3], voice.speech_tokens, voice.mel, voice.embedding,
                                     streaming=True, finalize=False)
    mel2 = tiny_engine.tokens_to_mel(tokens, voice.speech_tokens, voice.mel, voice.embedding,
                                     streaming=False, finalize=True)[:, :, 2 * hop:]
    replay = tiny_engine.mel_to_audio(np.concatenate([mel1, mel2], axis=2), finalize=True)[0]
    if len(chunks) == 2:
        np.testing.assert_allclose(np.concatenate(chunks), replay, atol=1e-5)
    else:
        np.testing.assert_allclose(chunks[0], replay[: len(chunks[0])], atol=1e-5)


@pytest.mark.parametrize("join", ["none", "crossfade"])
def test_a_segment_without_speech_tokens_is_skipped_streamed_as_whole(tiny_engine, prompt_wav, join):
    """max_len=0 ends every sentence before its first token: no audio, not a vocoder call on zero frames."""
    voice = tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT)
    text = "First sentence here. Second one."
    whole, info = tiny_engine.synthesize(text, voice=voice, seed=1, max_len=0, join=join, return_info=True)
    assert whole.size == 0 and info.tokens and not any(info.tokens)
    stream = tiny_engine.synthesize(text, voice=voice, seed=1, max_len=0, join=join, stream=True)
    assert sum(len(c) for c in stream) == 0
    # Both paths report the skipped sentence the same way: no tokens, no samples.
    assert stream.result.info.tokens == info.tokens and stream.result.info.segment_samples == info.segment_samples


def test_speed_changes_length_by_mel_interpolation(tiny_engine, prompt_wav):
    voice = tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT)
    normal = tiny_engine.synthesize(TEXT, voice=voice, seed=2, exact_len=50)
    fast = tiny_engine.synthesize(TEXT, voice=voice, seed=2, exact_len=50, speed=1.25)
    assert normal.size == 100 * 480 and fast.size == int(100 / 1.25) * 480


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=""), "empty"),
    (dict(text="x" * 6000), "limit"),
    (dict(text="Hi.", stream=True, speed=1.5), "streaming"),
    (dict(text="Hi.", speed=5.0), "speed"),
])
def test_bad_requests_give_clear_errors(tiny_engine, prompt_wav, kwargs, message):
    with pytest.raises(InputError, match=message):
        result = tiny_engine.synthesize(prompt_wav=prompt_wav, prompt_text=TRANSCRIPT, **kwargs)
        if not isinstance(result, np.ndarray):
            list(result)


def test_missing_prompt_is_a_clear_error(tiny_engine):
    with pytest.raises(InputError, match="prompt"):
        tiny_engine.synthesize("Hi.")


def test_rl_checkpoint_is_selectable(tiny_model_dir, prompt_wav):
    from cosyvoice_onnx import CosyVoice

    rl = CosyVoice(tiny_model_dir, llm_variant="rl")
    assert rl.files.llm.name == "llm.rl.pt"
    base_lm = CosyVoice(tiny_model_dir).stages.lm
    ids = np.array([1, 2, 3], dtype=np.int64)
    base_logits, _ = base_lm.prefill(ids, np.zeros(0, np.int64))
    rl_logits, _ = rl.stages.lm.prefill(ids, np.zeros(0, np.int64))
    assert not np.allclose(base_logits, rl_logits)

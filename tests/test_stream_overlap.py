"""Streaming: the LM decoding ahead in a thread (token_prefetch.py) and the smaller-first-chunk option."""

import threading
import time

import numpy as np
import pytest

from cosyvoice_onnx.errors import InputError, RequestTimeout
from cosyvoice_onnx.request import SynthesisRequest
from cosyvoice_onnx.token2wav import StreamSchedule
from cosyvoice_onnx.token_prefetch import prefetched
from cosyvoice_onnx.tools.parity import snr_db

TEXT = "Hello world, this is a tiny test of the streaming pipeline."
TRANSCRIPT = "hello there this is a test"
TOKENS = 120


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cosyvoice-lm-prefetch"]


def test_prefetched_tokens_come_in_order_from_a_thread_of_their_own():
    made_in = []

    def tokens():
        for token in range(50):
            made_in.append(threading.current_thread())
            yield token

    assert list(prefetched(tokens(), ahead=4)) == list(range(50))
    assert set(made_in) != {threading.current_thread()} and len(set(made_in)) == 1
    assert not _prefetch_threads()


def test_an_error_while_decoding_reaches_the_consumer_after_the_tokens_before_it():
    def tokens():
        yield 1
        yield 2
        raise InputError("the LM failed at step 3")

    seen = []
    with pytest.raises(InputError, match="failed at step 3"):
        for token in prefetched(tokens(), ahead=8):
            seen.append(token)
    assert seen == [1, 2]
    assert not _prefetch_threads()


def test_closing_the_stream_early_stops_the_decoding_thread_and_closes_its_generator():
    closed = threading.Event()

    def endless():
        try:
            token = 0
            while True:
                time.sleep(0.001)
                token += 1
                yield token
        finally:
            closed.set()

    stream = prefetched(endless(), ahead=5)
    assert [next(stream) for _ in range(3)] == [1, 2, 3]
    stream.close()
    assert closed.is_set(), "the decoding generator was not closed"
    assert not _prefetch_threads(), "the decoding thread outlived the stream"


def test_decoding_runs_at_most_ahead_tokens_before_the_consumer():
    made = []

    def tokens():
        for token in range(100):
            made.append(token)
            yield token

    stream = prefetched(tokens(), ahead=6)
    assert next(stream) == 0
    time.sleep(0.3)  # time enough to decode all 100 if nothing held the thread back
    # 6 waiting in the queue and the one the thread holds while the queue is full.
    assert len(made) == 1 + 6 + 1
    assert list(stream) == list(range(1, 100))
    with pytest.raises(ValueError, match="at least 1"):
        next(prefetched(iter([1]), ahead=0))


@pytest.fixture(scope="module")
def engines(tiny_model_dir, tiny_export_of):
    """The tiny CV3 model on PyTorch and on ONNX fp32."""
    from cosyvoice_onnx import CosyVoice

    export = tiny_export_of(3)
    return {"torch": CosyVoice(tiny_model_dir), "onnx": CosyVoice(export.parent, backend="onnx", export_dir=export)}


@pytest.fixture(scope="module")
def voice(engines, prompt_wav):
    return engines["torch"].prompt_from_audio(prompt_wav, TRANSCRIPT)


def _stream(engine, voice, **options) -> list[np.ndarray]:
    request = SynthesisRequest(TEXT, voice=voice, seed=4, stream=True, decode_options={"exact_len": TOKENS},
                               **options)
    return list(engine.stream(request))


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_lm_decoding_ahead_gives_the_serial_streams_chunks_sample_for_sample(engines, voice, backend):
    engine = engines[backend]
    assert not engine.stream_overlap, "on the CPU the default is serial"
    serial = _stream(engine, voice)
    engine.stream_overlap = True
    try:
        ahead = _stream(engine, voice)
    finally:
        engine.stream_overlap = False
    assert len(ahead) == len(serial) >= 3
    for a, b in zip(ahead, serial):
        np.testing.assert_array_equal(a, b)


def test_a_time_limit_hit_by_the_decoding_thread_ends_the_stream_with_its_message(tiny_model_dir, voice):
    from cosyvoice_onnx import CosyVoice

    engine = CosyVoice(tiny_model_dir, stream_overlap=True)
    request = SynthesisRequest(TEXT, voice=voice, stream=True, decode_options={"exact_len": 400},
                               max_seconds=0.05)
    with pytest.raises(RequestTimeout, match="0.05 s limit"):
        for _ in engine.stream(request):
            time.sleep(0.05)
    assert not _prefetch_threads()


def test_the_schedule_lists_the_flow_calls_the_stream_makes(engines, voice):
    engine = engines["torch"]
    calls = []
    real_mel = engine.token2wav.mel

    class CountingToken2Wav(type(engine.token2wav)):
        def mel(self, tokens, *args, **kwargs):
            calls.append((len(tokens), kwargs["finalize"]))
            return real_mel(tokens, *args, **kwargs)

    token2wav = CountingToken2Wav(engine.cfg, engine.stages.flow, engine.stages.vocoder, engine.stages.flow_noise,
                                  engine.token2wav.hift_noise)
    prompt = voice.speech_tokens.shape[1]
    for first_hop in (None, 7):
        calls.clear()
        schedule = token2wav.schedule(first_hop)
        list(token2wav.stream(iter(range(1, TOKENS + 1)), voice.speech_tokens, voice.mel, voice.embedding,
                              schedule=schedule))
        assert calls == schedule.calls(prompt, TOKENS)
    assert StreamSchedule(first_hop=7).calls(75, 250) == [(10, False), (60, False), (160, False), (250, True)]
    assert StreamSchedule().calls(75, 250) == [(28, False), (78, False), (178, False), (250, True)]
    assert StreamSchedule().calls(60, 10) == [(10, True)], "a request shorter than the first hop is one chunk"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_smaller_first_chunk_comes_sooner_and_changes_the_audio_a_little(engines, voice, backend):
    engine = engines[backend]
    official = _stream(engine, voice)
    early = _stream(engine, voice, first_chunk_tokens=10)
    ratio, hop_samples, held_back = 2, 480, 8  # the causal vocoder holds back 8 mel frames until the next chunk
    assert len(early[0]) == hop_samples * (ratio * 10 - held_back) < len(official[0])
    official_audio, early_audio = np.concatenate(official), np.concatenate(early)
    assert len(official_audio) == len(early_audio) == TOKENS * ratio * hop_samples
    assert not np.array_equal(official_audio, early_audio)
    # Near, not equal: the mel of the attention blocks around the cuts is computed before all their tokens came.
    assert 20 < snr_db(official_audio, early_audio) < float("inf")


def test_first_chunk_tokens_is_checked_once_with_a_clear_message(engines, voice, prompt_wav):
    for bad in (0, 101, True, 2.5, "10"):
        with pytest.raises(InputError, match=r"first_chunk_tokens must be an integer in 1 \.\. 100"):
            SynthesisRequest(TEXT, voice=voice, stream=True, first_chunk_tokens=bad)
    with pytest.raises(InputError, match="first_chunk_tokens works only when streaming"):
        SynthesisRequest(TEXT, voice=voice, first_chunk_tokens=10)
    # The model sets the least: a first chunk must bring the vocoder more mel frames than it keeps back.
    for engine in engines.values():
        assert engine.token2wav.min_first_hop() == 5
        with pytest.raises(InputError, match="at least 5 for this model"):
            engine.stream(SynthesisRequest(TEXT, voice=voice, stream=True, first_chunk_tokens=4))
    # The keyword shorthand takes it too, and streams.
    chunks = engines["torch"].synthesize(TEXT, prompt_wav=prompt_wav, prompt_text=TRANSCRIPT, stream=True,
                                         first_chunk_tokens=5, exact_len=40)
    assert len(next(iter(chunks))) == 480 * (2 * 5 - 8)


def test_synth_overlap_flag_is_on_off_or_the_engines_default():
    from cosyvoice_onnx.cli import build_parser

    base = ["synth", "--model", "m", "--text", "hi", "--out", "out.wav", "--stream"]
    parse = build_parser().parse_args
    assert parse(base).overlap is None
    assert parse(base + ["--overlap"]).overlap is True
    assert parse(base + ["--no-overlap"]).overlap is False
    assert parse(base + ["--first-chunk-tokens", "10"]).first_chunk_tokens == 10

"""Requests validated once, results that say how they were made, progress events and the time limit."""

import math

import numpy as np
import pytest

from cosyvoice_onnx.errors import InputError, RequestTimeout
from cosyvoice_onnx.request import SynthesisRequest

TRANSCRIPT = "hello there this is a test"
TEXT = "First sentence here. And a second, longer sentence follows it."


@pytest.fixture(scope="module")
def voice(tiny_engine, prompt_wav):
    return tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT)


@pytest.mark.parametrize("fields, message", [
    (dict(text="x" * 5001), "5001 characters; the limit is 5000"),
    (dict(text="  "), "empty"),
    (dict(instruct="y" * 501), "instruction is 501 characters; the limit is 500"),
    (dict(prompt_text="z" * 1001), "prompt transcript is 1001 characters; the limit is 1000"),
    (dict(seed=-1), "seed must be an integer in 0 .. 2\\*\\*64-1"),
    (dict(seed=2**64), "seed must be an integer"),
    (dict(seed=math.nan), "seed must be an integer"),
    (dict(seed="7"), "seed must be an integer"),
    (dict(seed=True), "seed must be an integer"),
    (dict(speed=2.5), "speed 2.5 is outside 0.5 .. 2.0"),
    (dict(speed=math.nan), "speed must be a finite number"),
    (dict(stream=True, speed=1.5), "only without streaming"),
    (dict(duration=3.0, speed=1.2), "either a duration or a speed"),
    (dict(sampler="beam"), "unknown sampler"),
    (dict(join="glue"), "unknown join"),
    (dict(decode_options={"temperature": 1}), "unknown decode option"),
    (dict(max_seconds=0), "max_seconds must be positive"),
])
def test_bad_fields_are_refused_when_the_request_is_made(voice, fields, message):
    with pytest.raises(InputError, match=message):
        SynthesisRequest(**{"text": "Hi.", "voice": voice, **fields})


def test_a_request_needs_a_voice_and_takes_the_largest_seed(voice):
    with pytest.raises(InputError, match="prompt clip"):
        SynthesisRequest(text="Hi.")
    assert SynthesisRequest(text="Hi.", voice=voice, seed=2**64 - 1).seed == 2**64 - 1
    assert SynthesisRequest(text="Hi.", voice=voice, seed=np.int64(5)).seed == 5


def test_the_result_says_how_it_was_made(tiny_engine, voice):
    events = []
    request = SynthesisRequest(text=TEXT, voice=voice, seed=4, decode_options={"max_len": 30})
    result = tiny_engine.synthesize(request, on_event=events.append)
    assert result.sampler == "torch" and result.plan == "torch" and result.seed == 4
    assert result.mode == "zero_shot" and result.sample_rate == 24000
    np.testing.assert_array_equal(result.audio, tiny_engine.synthesize(TEXT, voice=voice, seed=4, max_len=30))
    assert {"prompt", "lm", "flow", "vocoder", "total"} <= set(result.timings)
    assert all(v >= 0 for v in result.timings.values()) and result.timings["lm"] > 0
    n = len(result.info.segments)
    assert [(e.stage, e.done, e.total) for e in events] == [("segment", i, n) for i in range(1, n + 1)]
    assert result.events == events and sum(result.info.segment_samples) == result.info.samples == result.audio.size


def test_a_stream_yields_chunks_then_its_result(tiny_engine, voice):
    request = SynthesisRequest(text=TEXT, voice=voice, seed=4, stream=True, decode_options={"max_len": 30})
    stream = tiny_engine.stream(request)
    with pytest.raises(InputError, match="not finished"):
        stream.result
    chunks = list(stream)
    result = stream.result
    np.testing.assert_array_equal(result.audio, np.concatenate(chunks))
    assert result.info.tokens and len(result.info.tokens) == len(result.info.segments)
    assert sum(result.info.segment_samples) == result.audio.size and result.sampler == "torch"
    with pytest.raises(InputError, match="tts.stream"):
        tiny_engine.synthesize(request)


def test_a_request_past_its_time_limit_stops_with_a_clear_error(tiny_engine, voice):
    request = SynthesisRequest(text=TEXT, voice=voice, max_seconds=1e-9)
    with pytest.raises(RequestTimeout, match=r"ran past its 1e-09 s limit .*max_seconds"):
        tiny_engine.synthesize(request)
    with pytest.raises(RequestTimeout):
        list(tiny_engine.stream(request))
    assert tiny_engine.max_seconds == 600

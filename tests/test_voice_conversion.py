"""Voice conversion (no LM): output length, torch/ONNX parity, the target voice, streaming, long sources, bad input."""

import functools

import numpy as np
import pytest

from cosyvoice_onnx.releases import RELEASES
from cosyvoice_onnx.conversion import (MAX_SOURCE_SECONDS, MIN_SOURCE_SECONDS, ConversionRequest, load_source,
                                       split_at_pauses)
from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.frontend import PromptFeatures
from cosyvoice_onnx.tools.tiny import synthetic_voice

VERSIONS = sorted(RELEASES)
RATE = 24000


def clip(seconds: float, seed: int) -> tuple[int, np.ndarray]:
    return RATE, synthetic_voice(seconds, RATE, seed=seed)


@pytest.fixture(scope="module")
def engine_of(tiny_model_of, tiny_export_of):
    from cosyvoice_onnx import CosyVoice

    @functools.cache
    def of(version: int, backend: str = "torch"):
        model = tiny_model_of(version) if backend == "torch" else tiny_export_of(version).parent
        return CosyVoice(model, backend=backend)

    return of


@pytest.mark.parametrize("version", VERSIONS)
def test_converted_clip_has_the_source_token_count_worth_of_samples(engine_of, version):
    tts = engine_of(version)
    ratio, hop = tts.cfg.flow.token_mel_ratio, tts.cfg.hift.hop_samples
    source = clip(2.0, seed=5)
    source_tokens = tts.frontend.speech_tokens(load_source(source)).shape[1]
    voice = tts.prompt_from_audio(clip(3.0, seed=1))          # a saved voice is aligned 2:1
    result = tts.convert(source, voice=voice, seed=0)
    assert result.mode == "vc" and result.sampler == "none"
    (tokens,) = result.info.tokens
    assert tokens == source_tokens == 50 and len(result.audio) == tokens * ratio * hop
    # A prompt clip is used untrimmed, as officially: its extra mel frames come off the output's start.
    prompt = clip(3.03, seed=1)
    raw = tts.frontend.extract_prompt(prompt, trim=False)
    extra = raw.mel.shape[1] - ratio * raw.speech_tokens.shape[1]
    assert extra != 0
    audio = tts.convert(source, prompt_wav=prompt).audio
    assert len(audio) == (tokens * ratio - extra) * hop


@pytest.mark.parametrize("version", VERSIONS)
def test_torch_and_onnx_conversions_agree(engine_of, version):
    from cosyvoice_onnx.tools.parity import snr_db

    ref, test = engine_of(version, "torch"), engine_of(version, "onnx")
    source, prompt = clip(2.0, seed=5), clip(3.03, seed=2)
    voice = ref.frontend.extract_prompt(prompt, trim=False)
    tokens = ref.frontend.speech_tokens(load_source(source))
    mels = [tts.tokens_to_mel(tokens, voice.speech_tokens, voice.mel, voice.embedding) for tts in (ref, test)]
    mel_diff = float(np.max(np.abs(mels[0] - mels[1])))
    a = ref.convert(source, prompt_wav=prompt, seed=3).audio
    b = test.convert(source, prompt_wav=prompt, seed=3).audio
    print(f"CV{version} conversion torch vs onnx: mel max diff {mel_diff:.2e}, audio SNR {snr_db(a, b):.1f} dB")
    assert mel_diff <= 1e-3
    assert a.shape == b.shape and snr_db(a, b) >= 40
    streamed = [np.concatenate(list(tts.convert(source, prompt_wav=prompt, seed=3, stream=True)))
                for tts in (ref, test)]
    assert streamed[0].shape == streamed[1].shape and snr_db(*streamed) >= 40


@pytest.mark.parametrize("version", VERSIONS)
def test_the_target_voice_embedding_is_used(engine_of, version):
    tts = engine_of(version)
    source = clip(2.0, seed=5)
    voice = tts.prompt_from_audio(clip(3.0, seed=1))
    other = PromptFeatures(voice.speech_tokens, voice.mel, np.roll(voice.embedding, 7, axis=1))
    a = tts.convert(source, voice=voice).audio
    b = tts.convert(source, voice=other).audio
    c = tts.convert(source, voice=tts.prompt_from_audio(clip(3.0, seed=9))).audio
    assert a.shape == b.shape == c.shape
    assert not np.allclose(a, b, atol=1e-4) and not np.allclose(a, c, atol=1e-4)
    assert np.array_equal(a, tts.convert(source, voice=voice).audio)  # and it is repeatable


@pytest.mark.parametrize("version", VERSIONS)
def test_streamed_chunks_concatenate_to_the_streamed_whole(engine_of, version):
    tts = engine_of(version)
    source, voice = clip(4.0, seed=5), tts.prompt_from_audio(clip(3.0, seed=1))
    stream = tts.convert(source, voice=voice, stream=True, seed=2)
    chunks = list(stream)
    assert len(chunks) >= 2
    assert np.array_equal(np.concatenate(chunks), stream.result.audio)
    assert stream.result.mode == "vc" and stream.result.info.tokens == [100]
    assert len(stream.result.audio) == len(tts.convert(source, voice=voice, seed=2).audio)


def test_a_long_source_is_converted_in_segments_cut_at_pauses(engine_of):
    tts = engine_of(3)
    speech = synthetic_voice(20.0, RATE, seed=4)
    pause = np.zeros(int(0.6 * RATE), dtype=np.float32)
    source = (RATE, np.concatenate([speech, pause, speech[: 14 * RATE]]))   # 34.6 s, a pause at 20 s
    events = []
    result = tts.convert(source, voice=tts.prompt_from_audio(clip(3.0, seed=1)), on_event=events.append)
    assert len(result.info.segments) == 2
    assert result.info.segments[0].startswith("0.00-20.")
    assert [(e.done, e.total) for e in events if e.stage == "segment"] == [(1, 2), (2, 2)]
    ratio, hop = tts.cfg.flow.token_mel_ratio, tts.cfg.hift.hop_samples
    assert len(result.audio) == sum(result.info.tokens) * ratio * hop == sum(result.info.segment_samples)


def test_split_at_pauses_bounds_every_piece():
    rate = 16000
    rng = np.random.default_rng(0)
    wav = rng.uniform(-0.3, 0.3, 95 * rate).astype(np.float32)
    wav[20 * rate: 20 * rate + rate // 2] = 0                     # one clear pause
    ranges = split_at_pauses(wav, rate, max_seconds=30.0)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(wav)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(MIN_SOURCE_SECONDS * rate <= end - start <= 30 * rate for start, end in ranges)
    assert 20 * rate <= ranges[0][1] <= 20.5 * rate
    assert split_at_pauses(wav[: 10 * rate], rate) == [(0, 10 * rate)]
    # A quiet spot at the very end must not leave a sliver behind.
    tail = np.concatenate([rng.uniform(-0.3, 0.3, int(30.1 * rate)).astype(np.float32),
                           np.zeros(rate // 20, dtype=np.float32)])
    assert all(end - start >= MIN_SOURCE_SECONDS * rate for start, end in split_at_pauses(tail, rate))


@pytest.mark.parametrize("source, message", [
    ((RATE, synthetic_voice(0.3, RATE, seed=1)), "source audio is 0.30 s long; at least 0.5 s"),
    ((RATE, np.zeros(RATE * 2, dtype=np.float32)), "source audio is silent"),
    ((8000, synthetic_voice(2.0, 8000, seed=1)), "sample rate of 8000 Hz"),
    (b"not a wav file at all", "cannot read the uploaded audio as audio"),
    ((16000, np.full(int((MAX_SOURCE_SECONDS + 1) * 16000), 0.1, dtype=np.float32)), "at most 300 s"),
    ((RATE, np.full(RATE, np.nan, dtype=np.float32)), "source audio contains NaN"),
])
def test_bad_sources_give_clear_messages(engine_of, source, message):
    tts = engine_of(3)
    voice = tts.prompt_from_audio(clip(3.0, seed=1))
    with pytest.raises(InputError, match=message):
        tts.convert(source, voice=voice)


def test_a_source_at_another_rate_is_resampled(engine_of):
    tts = engine_of(3)
    voice = tts.prompt_from_audio(clip(3.0, seed=1))
    result = tts.convert((44100, synthetic_voice(2.0, 44100, seed=5)), voice=voice)
    assert result.info.tokens == [50]


def test_the_request_needs_exactly_one_target_voice(tiny_engine, prompt_wav):
    voice = tiny_engine.prompt_from_audio(prompt_wav)
    with pytest.raises(InputError, match="needs a target voice"):
        ConversionRequest(clip(2.0, seed=5))
    with pytest.raises(InputError, match="not both"):
        ConversionRequest(clip(2.0, seed=5), voice=voice, prompt_wav=prompt_wav)
    with pytest.raises(InputError, match="needs a source recording"):
        tiny_engine.convert(None, voice=voice)
    with pytest.raises(InputError, match="seed"):
        tiny_engine.convert(clip(2.0, seed=5), voice=voice, seed=-1)
    with pytest.raises(InputError, match="without streaming"):
        tiny_engine.convert(clip(2.0, seed=5), voice=voice, speed=1.5, stream=True)
    with pytest.raises(InputError, match="outside 0.5 .. 2.0"):
        tiny_engine.convert(clip(2.0, seed=5), voice=voice, speed=3)


def test_speed_resamples_the_mel(tiny_engine, prompt_wav):
    voice = tiny_engine.prompt_from_audio(prompt_wav)
    hop = tiny_engine.cfg.hift.hop_samples
    assert len(tiny_engine.convert(clip(2.0, seed=5), voice=voice, speed=2.0).audio) == 50 * hop   # 100 frames / 2


# ---------------------------------------------------------------- CLI


def test_cli_convert_with_a_prompt_clip_and_with_a_saved_voice(tiny_model_dir, prompt_wav, tmp_path, capsys):
    import soundfile as sf

    from cosyvoice_onnx.audio import write_wav
    from cosyvoice_onnx.cli import main

    source = tmp_path / "source.wav"
    write_wav(source, synthetic_voice(2.0, 44100, seed=5), 44100)
    out = tmp_path / "out.wav"
    assert main([str(a) for a in ("convert", "--model", tiny_model_dir, "--source-wav", source, "--prompt-wav",
                                  prompt_wav, "--out", out)]) == 0
    assert "1 segment(s), 50 speech tokens" in capsys.readouterr().out
    assert sf.info(str(out)).samplerate == 24000 and sf.info(str(out)).frames > 0
    voices = tmp_path / "voices"
    assert main([str(a) for a in ("voices", "save", "target", "--model", tiny_model_dir, "--prompt-wav",
                                  prompt_wav, "--voices-dir", voices)]) == 0
    assert main([str(a) for a in ("convert", "--model", tiny_model_dir, "--source-wav", source, "--voice", "target",
                                  "--voices-dir", voices, "--out", out, "--stream", "--seed", "4")]) == 0
    assert sf.info(str(out)).frames == 50 * 2 * 480


@pytest.mark.parametrize("extra, expected, code", [
    (["--voice", "x"], "either --prompt-wav or --voice", 2),
    ([], "either --prompt-wav or --voice", 2),
    (["--seed", "-3"], "argument --seed", 2),
])
def test_cli_convert_errors_are_one_line(tiny_model_dir, prompt_wav, tmp_path, capsys, extra, expected, code):
    from cosyvoice_onnx.cli import main

    argv = ["convert", "--model", tiny_model_dir, "--source-wav", prompt_wav, "--out", tmp_path / "o.wav"]
    if extra != []:
        argv += ["--prompt-wav", prompt_wav]
    assert main([str(a) for a in argv + extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and expected in err[0]


def test_cli_convert_bad_source_is_one_line(tiny_model_dir, prompt_wav, tmp_path, capsys):
    from cosyvoice_onnx.cli import main

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    for source, expected in ((tmp_path / "missing.wav", "not found"), (bad, "cannot read")):
        assert main(["convert", "--model", str(tiny_model_dir), "--source-wav", str(source), "--prompt-wav",
                     str(prompt_wav), "--out", str(tmp_path / "o.wav")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0]


def test_a_conversion_stops_at_its_time_limit(tiny_engine, prompt_wav):
    from cosyvoice_onnx.errors import RequestTimeout

    voice = tiny_engine.prompt_from_audio(prompt_wav)
    with pytest.raises(RequestTimeout, match="time limit|limit"):
        tiny_engine.convert(clip(2.0, seed=5), voice=voice, max_seconds=1e-6)

"""Audio loading, resampling, prompt validation and WAV writing."""

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cosyvoice_onnx.audio import (MAX_PROMPT_SECONDS, check_prompt_audio, load_audio, resample, to_int16,
                                  write_wav)
from cosyvoice_onnx.errors import InputError


def sine(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(audio, rate):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


def test_stereo_file_is_averaged_to_mono(tmp_path):
    left, right = sine(440, 1.0, 16000), sine(1000, 1.0, 16000, 0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    mono = load_audio(path, 16000)
    assert mono.dtype == np.float32 and mono.shape == left.shape
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("target", [16000, 24000])
def test_resampling_keeps_length_and_frequency(tmp_path, target):
    source = sine(1000, 2.0, 44100)[:88237]  # a length that does not divide evenly
    path = tmp_path / "tone.flac"
    sf.write(path, source, 44100)
    out = load_audio(path, target)
    assert len(out) == math.ceil(len(source) * target / 44100)  # torchaudio's output length
    assert abs(dominant_frequency(out, target) - 1000) < 1.0
    interior = out[target // 10:-target // 10]
    assert abs(np.sqrt(np.mean(interior ** 2)) - 0.5 / np.sqrt(2)) < 2e-3


@pytest.mark.parametrize("suffix, subtype", [("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")])
def test_compressed_formats_decode(tmp_path, suffix, subtype):
    path = tmp_path / f"tone.{suffix}"
    sf.write(path, sine(750, 1.0, 48000), 48000, subtype=subtype)
    out = load_audio(path, 16000)
    assert abs(len(out) - 16000) < 1200 and abs(dominant_frequency(out, 16000) - 750) < 2.0


def test_resample_matches_closed_form_sine_in_the_interior():
    rate_in, rate_out, freq = 48000, 16000, 440.0
    out = resample(sine(freq, 1.0, rate_in), rate_in, rate_out)
    expected = sine(freq, 1.0, rate_out)
    np.testing.assert_allclose(out[200:-200], expected[200:-200], atol=2e-3)


def test_bytes_and_file_objects_are_accepted(tmp_path):
    buffer = io.BytesIO()
    sf.write(buffer, sine(300, 0.5, 24000), 24000, format="WAV", subtype="PCM_16")
    from_bytes = load_audio(buffer.getvalue(), 24000)
    file_object = io.BytesIO(buffer.getvalue())
    from_file_object = load_audio(file_object, 24000)
    np.testing.assert_array_equal(from_bytes, from_file_object)
    assert len(load_audio(file_object, 16000)) == 8000  # rewound, so it decodes again
    np.testing.assert_allclose(from_bytes, sine(300, 0.5, 24000), atol=1 / 32768)


def test_gradio_int16_tuple_is_scaled_and_mixed_down():
    left = np.array([16384, -32768, 0, 32767], dtype=np.int16)
    right = np.array([0, 0, 16384, -16384], dtype=np.int16)
    pairs = np.stack([left, right], axis=1)
    mono = load_audio((16000, pairs), 16000)
    expected = (left.astype(np.float64) + right) / 2 / 32768
    np.testing.assert_allclose(mono, expected, atol=1e-7)
    assert mono.dtype == np.float32


def test_gradio_int32_and_float_tuples():
    int32 = np.array([2 ** 30, -(2 ** 31)], dtype=np.int32)
    np.testing.assert_allclose(load_audio((16000, int32), 16000), [0.5, -1.0])
    floats = np.array([0.25, -0.75], dtype=np.float64)
    np.testing.assert_allclose(load_audio((16000, floats), 16000), floats)


def test_tuple_is_resampled():
    out = load_audio((48000, (sine(500, 1.0, 48000) * 32767).astype(np.int16)), 16000)
    assert len(out) == 16000 and abs(dominant_frequency(out, 16000) - 500) < 1.0


@pytest.mark.parametrize("source, message", [
    ((16000, np.array(["a", "b"])), "unsupported sample type"),
    ((16000, np.zeros((2, 2, 2), np.float32)), "expected samples shaped"),
    ((0, np.zeros(10, np.float32)), "bad sample rate"),
    ((16000, np.zeros(0, np.int16)), "no audio samples"),
])
def test_bad_tuples_raise_input_error(source, message):
    with pytest.raises(InputError, match=message):
        load_audio(source, 16000)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"not found") as info:
        load_audio(tmp_path / "nope.wav", 16000)
    assert "nope.wav" in str(info.value)


def test_non_audio_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is a text file, not audio\n" * 20)
    with pytest.raises(InputError, match=r"cannot read .*notes\.wav.* as audio"):
        load_audio(path, 16000)


def test_corrupt_wav_header(tmp_path):
    good = io.BytesIO()
    sf.write(good, sine(440, 1.0, 16000), 16000, format="WAV", subtype="PCM_16")
    path = tmp_path / "broken.wav"
    path.write_bytes(good.getvalue()[:30])  # header cut before the data chunk
    with pytest.raises(InputError, match=r"broken\.wav.*corrupt"):
        load_audio(path, 16000)


def test_empty_files(tmp_path):
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(InputError, match=r"zero\.wav.* empty"):
        load_audio(zero_bytes, 16000)
    no_samples = tmp_path / "nosamples.wav"
    sf.write(no_samples, np.zeros(0, np.float32), 16000)
    with pytest.raises(InputError, match=r"nosamples\.wav.* no audio samples"):
        load_audio(no_samples, 16000)
    with pytest.raises(InputError, match="empty"):
        load_audio(b"", 16000)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        load_audio(tmp_path, 16000)


def test_low_sample_rate_is_rejected(tmp_path):
    path = tmp_path / "phone.wav"
    sf.write(path, sine(440, 1.0, 8000), 8000)
    with pytest.raises(InputError, match=r"phone\.wav.* 8000 Hz.* 16000 Hz"):
        load_audio(path, 16000)


def test_check_prompt_audio_accepts_quiet_speech_like_audio():
    check_prompt_audio(sine(200, 3.0, 16000, amplitude=0.02))  # peak -34 dBFS


def test_check_prompt_audio_rejects_silence(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(32000, np.float32), 16000)
    with pytest.raises(InputError, match="silent"):
        check_prompt_audio(load_audio(path, 16000))
    click = np.zeros(48000, np.float32)
    click[100] = 0.1
    with pytest.raises(InputError, match="silent"):
        check_prompt_audio(click)
    with pytest.raises(InputError, match="silent"):
        check_prompt_audio(sine(200, 3.0, 16000, amplitude=0.005))  # hum far below speech level


def test_check_prompt_audio_rejects_bad_lengths_and_values():
    with pytest.raises(InputError, match="at least 1 s"):
        check_prompt_audio(sine(200, 0.5, 16000))
    too_long = sine(200, MAX_PROMPT_SECONDS + 0.01, 16000)
    with pytest.raises(InputError, match="at most 30 s"):
        check_prompt_audio(too_long)
    check_prompt_audio(sine(200, MAX_PROMPT_SECONDS, 16000))  # exactly 30 s is allowed, as upstream
    nan = sine(200, 2.0, 16000)
    nan[5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_prompt_audio(nan)


def test_too_long_file_is_flagged(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, sine(200, 31.0, 16000), 16000)
    with pytest.raises(InputError, match="at most 30 s"):
        check_prompt_audio(load_audio(path, 16000))


def test_to_int16_clips_and_rounds():
    out = to_int16(np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, 1 / 65534], np.float32))
    np.testing.assert_array_equal(out, [0, 16384, -16384, 32767, -32767, 32767, -32767, 0])
    assert out.dtype == np.int16


def test_write_wav_round_trip(tmp_path):
    audio = sine(440, 0.5, 24000, 0.9)
    path = tmp_path / "out.wav"
    write_wav(path, audio, 24000)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    data, _ = sf.read(path, dtype="int16")
    np.testing.assert_array_equal(data, to_int16(audio))


def test_modules_do_not_import_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "import cosyvoice_onnx.audio, cosyvoice_onnx.features")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr

"""Frontend features against independent references: librosa and kaldi-native-fbank."""


import kaldi_native_fbank as knf
import librosa
import numpy as np
import pytest

from cosyvoice_onnx.config import FeatureConfig
from cosyvoice_onnx.features import (align_prompt, campplus_features, kaldi_fbank, mel_filters_slaney,
                                     prompt_mel, whisper_log_mel)


def speech_like(n_samples, rate, seed=0):
    """A voiced tone with vibrato, a tremolo envelope and a noise floor: every mel band gets energy."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / rate
    voiced = sum(np.sin(2 * np.pi * k * 180 * (t + 0.002 * np.sin(2 * np.pi * 5 * t))) / k for k in range(1, 12))
    envelope = 0.5 + 0.4 * np.sin(2 * np.pi * 2.5 * t)
    return (0.2 * envelope * voiced + 0.01 * rng.standard_normal(n_samples)).astype(np.float32)


@pytest.mark.parametrize("sr, n_fft, n_mels, fmin, fmax", [
    (16000, 400, 128, 0.0, None),
    (16000, 400, 80, 0.0, None),
    (24000, 1920, 80, 0.0, None),
    (24000, 1920, 80, 0.0, 8000.0),
    (22050, 1024, 40, 55.0, 7600.0),
])
def test_mel_filters_match_librosa(sr, n_fft, n_mels, fmin, fmax):
    ours = mel_filters_slaney(sr, n_fft, n_mels, fmin, fmax)
    reference = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.dtype == np.float32 and ours.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-7)


def librosa_whisper_log_mel(audio, n_mels):
    spectrum = librosa.stft(audio.astype(np.float64), n_fft=400, hop_length=160, window="hann", center=True,
                            pad_mode="reflect")
    power = np.abs(spectrum[:, :-1]) ** 2
    log_mel = np.log10(np.maximum(librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels) @ power, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return (log_mel + 4.0) / 4.0


@pytest.mark.parametrize("n_samples", [16000 * 3, 16000 * 5 + 97, 16000 * 2 + 159])
def test_whisper_log_mel_matches_librosa_formula(n_samples):
    audio = speech_like(n_samples, 16000)
    ours = whisper_log_mel(audio)
    assert ours.dtype == np.float32 and ours.shape == (1, 128, n_samples // 160)
    reference = librosa_whisper_log_mel(audio, 128)
    diff = np.abs(ours[0] - reference).max()
    assert diff < 1e-4, diff


def test_whisper_log_mel_floor_is_global_max_minus_8():
    audio = speech_like(16000 * 2, 16000)
    audio[:16000] *= 1e-6  # a near-silent first second drives the floor
    log_mel = whisper_log_mel(audio)
    np.testing.assert_allclose(log_mel.min(), log_mel.max() - 2.0, atol=1e-6)  # 8 decades / 4


def kaldi_native_reference(audio, num_bins=80):
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.round_to_power_of_two = True
    opts.mel_opts.num_bins = num_bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0  # 0 means Nyquist
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, audio.tolist())
    fbank.input_finished()
    return np.array([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


@pytest.mark.parametrize("n_samples", [16000 * 3, 16000 * 4 + 123, 400, 559, 560])
def test_kaldi_fbank_matches_kaldi_native_fbank(n_samples):
    audio = speech_like(n_samples, 16000, seed=n_samples)
    ours = kaldi_fbank(audio)
    assert ours.dtype == np.float32 and ours.shape == (1 + (n_samples - 400) // 160, 80)
    reference = kaldi_native_reference(audio)
    assert reference.shape == ours.shape
    diff = np.abs(ours - reference).max()
    assert diff < 1e-3, diff


def test_kaldi_fbank_shorter_than_one_frame_is_empty():
    assert kaldi_fbank(np.zeros(399, np.float32)).shape == (0, 80)


def test_campplus_features_are_mean_normalised_fbank():
    audio = speech_like(16000 * 2, 16000)
    features = campplus_features(audio)
    reference = kaldi_native_reference(audio)
    assert features.shape == reference.shape and features.dtype == np.float32
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(features, reference - reference.mean(axis=0), atol=1e-3)


def librosa_prompt_mel(audio, cfg):
    side = (cfg.n_fft - cfg.hop_size) // 2
    padded = np.pad(audio.astype(np.float64), (side, side), mode="reflect")
    spectrum = librosa.stft(padded, n_fft=cfg.n_fft, hop_length=cfg.hop_size, win_length=cfg.win_size,
                            window="hann", center=False)
    magnitude = np.sqrt(np.abs(spectrum) ** 2 + 1e-9)
    bank = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.num_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    return np.log(np.maximum(bank @ magnitude, 1e-5)).T


@pytest.mark.parametrize("fmax", [None, 8000.0])
@pytest.mark.parametrize("n_samples", [24000 * 3, 24000 * 2 + 479, 24000 * 2 + 480])
def test_prompt_mel_matches_librosa(fmax, n_samples):
    cfg = FeatureConfig(fmax=fmax)
    audio = speech_like(n_samples, 24000)
    ours = prompt_mel(audio, cfg)
    assert ours.dtype == np.float32 and ours.shape == (1, n_samples // 480, 80)
    diff = np.abs(ours[0] - librosa_prompt_mel(audio, cfg)).max()
    assert diff < 1e-4, diff


def test_prompt_mel_fmax_changes_the_top_bands():
    audio = speech_like(24000, 24000)
    full_band = prompt_mel(audio, FeatureConfig(fmax=None))
    cv2_band = prompt_mel(audio, FeatureConfig(fmax=8000.0))
    assert np.abs(full_band - cv2_band).max() > 0.1


def test_align_prompt_trims_to_the_shorter_side():
    tokens = np.arange(10)[None]
    mel = np.arange(17 * 6, dtype=np.float32).reshape(1, 17, 6)
    kept_tokens, kept_mel = align_prompt(tokens, mel)
    np.testing.assert_array_equal(kept_tokens, tokens[:, :8])  # 17 frames hold 8 whole tokens
    np.testing.assert_array_equal(kept_mel, mel[:, :16])

    few_tokens = np.arange(5)[None]
    kept_tokens, kept_mel = align_prompt(few_tokens, mel)
    assert kept_tokens.shape == (1, 5) and kept_mel.shape == (1, 10, 6)

    kept_tokens, kept_mel = align_prompt(tokens, mel, ratio=3)
    assert kept_tokens.shape == (1, 5) and kept_mel.shape == (1, 15, 6)

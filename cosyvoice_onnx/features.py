"""Frontend features in numpy: whisper log-mel (speech tokens), Kaldi fbank (CAM++), prompt mel (flow)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .config import FeatureConfig

WHISPER_N_FFT = 400
WHISPER_HOP = 160
KALDI_FRAME = 400                  # 25 ms at 16 kHz
KALDI_SHIFT = 160                  # 10 ms
KALDI_FFT = 512                    # frame rounded up to a power of two
KALDI_PREEMPH = 0.97
KALDI_LOG_FLOOR = 1.1920929e-07    # float32 machine epsilon, Kaldi's energy floor


def _frames(signal: np.ndarray, frame_length: int, hop: int) -> np.ndarray:
    """[N] -> [1 + (N - frame_length) // hop, frame_length] as a strided view (no copy)."""
    return np.lib.stride_tricks.sliding_window_view(signal, frame_length)[::hop]


def _hann_periodic(length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


# ----------------------------------------------------------------------------- Slaney mel filters


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear_step = 200.0 / 3.0
    log_start_hz, log_step = 1000.0, np.log(6.4) / 27.0
    log_start_mel = log_start_hz / linear_step
    safe_hz = np.maximum(hz, log_start_hz)
    return np.where(hz >= log_start_hz, log_start_mel + np.log(safe_hz / log_start_hz) / log_step, hz / linear_step)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    linear_step = 200.0 / 3.0
    log_start_hz, log_step = 1000.0, np.log(6.4) / 27.0
    log_start_mel = log_start_hz / linear_step
    return np.where(mel >= log_start_mel, log_start_hz * np.exp(log_step * (mel - log_start_mel)), mel * linear_step)


@lru_cache(maxsize=16)
def _mel_filters_cached(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    fmax = sr / 2.0 if fmax is None else float(fmax)
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    edges_hz = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    offsets = edges_hz[:, None] - fft_hz[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    # Rounded to float32 before the area normalisation, as librosa does, so the bank matches it bit for bit.
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    bank = (triangles * area_norm[:, None]).astype(np.float32)
    bank.flags.writeable = False
    return bank


def mel_filters_slaney(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                       fmax: float | None = None) -> np.ndarray:
    """librosa.filters.mel defaults (Slaney scale, Slaney area norm) as [n_mels, n_fft//2+1] float32.

    Written out here so the runtime does not need librosa.
    """
    return _mel_filters_cached(int(sr), int(n_fft), int(n_mels), float(fmin), None if fmax is None else float(fmax))


# ----------------------------------------------------------------------------- whisper log-mel (speech tokens)


def whisper_log_mel(audio16k: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """openai-whisper log_mel_spectrogram of 16 kHz audio -> [1, n_mels, N // 160] float32."""
    audio = np.asarray(audio16k, dtype=np.float64).reshape(-1)
    half = WHISPER_N_FFT // 2
    padded = np.pad(audio, (half, half), mode="reflect")
    spectrum = np.fft.rfft(_frames(padded, WHISPER_N_FFT, WHISPER_HOP) * _hann_periodic(WHISPER_N_FFT), axis=-1)
    power = np.square(spectrum.real) + np.square(spectrum.imag)
    power = power[:-1]  # whisper drops the last centred frame
    mel = mel_filters_slaney(16000, WHISPER_N_FFT, n_mels).astype(np.float64) @ power.T
    log_mel = np.log10(np.maximum(mel, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)[None]


# ----------------------------------------------------------------------------- Kaldi fbank (speaker embedding)


@lru_cache(maxsize=4)
def _kaldi_mel_banks(num_bins: int, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """Kaldi triangular banks in the mel domain, [num_bins, KALDI_FFT//2 + 1]; the Nyquist bin gets weight 0.

    Evaluated in float32 like torchaudio, whose rounding of mel values near 2800 moves weights by ~1e-5.
    """
    low_mel, high_mel = (1127.0 * math.log(1.0 + hz / 700.0) for hz in (low_hz, high_hz))
    step = (high_mel - low_mel) / (num_bins + 1)
    index = np.arange(num_bins, dtype=np.float32)[:, None]
    left, centre, right = (low_mel + (index + k) * step for k in (0.0, 1.0, 2.0))
    bin_hz = np.float32(sample_rate / KALDI_FFT) * np.arange(KALDI_FFT // 2, dtype=np.float32)
    bin_mel = (1127.0 * np.log(1.0 + bin_hz / 700.0))[None, :]
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    banks = np.zeros((num_bins, KALDI_FFT // 2 + 1))
    banks[:, :-1] = np.maximum(0.0, np.minimum(rising, falling))
    banks.flags.writeable = False
    return banks


def kaldi_fbank(audio16k: np.ndarray, num_mel_bins: int = 80) -> np.ndarray:
    """torchaudio.compliance.kaldi.fbank(dither=0, sample_frequency=16000) of [-1, 1] audio -> [T, bins] float32.

    T = 1 + (N - 400) // 160 (snip_edges); audio shorter than one frame gives T = 0.
    """
    audio = np.asarray(audio16k, dtype=np.float64).reshape(-1)
    if len(audio) < KALDI_FRAME:
        return np.zeros((0, num_mel_bins), dtype=np.float32)
    frames = _frames(audio, KALDI_FRAME, KALDI_SHIFT)
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # first sample is its own predecessor
    frames = frames - KALDI_PREEMPH * previous
    povey = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(KALDI_FRAME) / (KALDI_FRAME - 1))) ** 0.85
    spectrum = np.fft.rfft(frames * povey, n=KALDI_FFT, axis=-1)
    power = np.square(spectrum.real) + np.square(spectrum.imag)
    energies = power @ _kaldi_mel_banks(num_mel_bins, 16000, 20.0, 8000.0).T
    return np.log(np.maximum(energies, KALDI_LOG_FLOOR)).astype(np.float32)


def campplus_features(audio16k: np.ndarray) -> np.ndarray:
    """CAM++ input before batching: 80-bin Kaldi fbank minus its per-utterance mean, [T, 80] float32."""
    fbank = kaldi_fbank(audio16k, num_mel_bins=80)
    return fbank - fbank.mean(axis=0, keepdims=True)


# ----------------------------------------------------------------------------- prompt mel (flow conditioning)


def prompt_mel(audio24k: np.ndarray, cfg: FeatureConfig | None = None) -> np.ndarray:
    """Matcha-TTS mel_spectrogram (center=False) of 24 kHz audio -> [1, N // hop, num_mels] float32 (time-major)."""
    cfg = cfg or FeatureConfig()
    audio = np.asarray(audio24k, dtype=np.float64).reshape(-1)
    if len(audio) < cfg.hop_size:
        return np.zeros((1, 0, cfg.num_mels), dtype=np.float32)
    side = (cfg.n_fft - cfg.hop_size) // 2
    padded = np.pad(audio, (side, side), mode="reflect")
    window = np.zeros(cfg.n_fft)
    start = (cfg.n_fft - cfg.win_size) // 2  # a shorter window is centred in the FFT frame, as torch.stft does
    window[start:start + cfg.win_size] = _hann_periodic(cfg.win_size)
    spectrum = np.fft.rfft(_frames(padded, cfg.n_fft, cfg.hop_size) * window, axis=-1)
    magnitude = np.sqrt(np.square(spectrum.real) + np.square(spectrum.imag) + 1e-9)
    bank = mel_filters_slaney(cfg.sample_rate, cfg.n_fft, cfg.num_mels, cfg.fmin, cfg.fmax)
    mel = magnitude @ bank.T.astype(np.float64)
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)[None]


def align_prompt(tokens: np.ndarray, mel: np.ndarray, ratio: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Trims prompt tokens [1, n] and prompt mel [1, T, C] to L tokens and ratio*L frames, L = min(T // ratio, n)."""
    length = min(mel.shape[1] // ratio, tokens.shape[1])
    return tokens[:, :length], mel[:, :ratio * length]

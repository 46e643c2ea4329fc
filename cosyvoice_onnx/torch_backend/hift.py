"""HiFT vocoder (NSF source + iSTFT generator) in PyTorch, checkpoint-compatible with the official hift.pt."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..config import HiFTConfig
from ..noise import vocoder_source_samples

# The CV3 f0 predictor's first conv sees this many future frames; the official hard-codes it.
F0_LOOK_RIGHT = 3


# --------------------------------------------------------------------------- exportable building blocks


def repeat_frames(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling along the last axis by an integer factor.

    Equal to the official `nn.Upsample(mode='nearest')` for the factors and lengths used here (a test
    checks it); written as expand+reshape because that exports to plain ONNX ops with exact indices.
    """
    return x.unsqueeze(-1).expand(*x.shape, factor).reshape(*x.shape[:-1], x.shape[-1] * factor)


def periodic_hann(n_fft: int) -> np.ndarray:
    """scipy's `get_window('hann', n_fft, fftbins=True)` rounded to float32, as the official uses it."""
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)


def _conv_kernel(rows: np.ndarray) -> torch.Tensor:
    """[K, N] float64 basis -> float32 conv1d kernel [K, 1, N]."""
    return torch.from_numpy(rows.astype(np.float32)).unsqueeze(1)


class ConvSTFT(nn.Module):
    """STFT / iSTFT as strided (transposed) convolutions against a windowed DFT basis.

    Hand-written because torch.stft/istft do not export usefully to ONNX. Matches `torch.stft(center=True,
    pad_mode='reflect', onesided)` and `torch.istft(center=True)` with the same window to float32 rounding
    (not bit for bit: an FFT sums in another order). `use_torch_fft = True` calls torch.stft/istft instead,
    which reproduces the official vocoder bit for bit. Spectra are laid out as `[real bins | imaginary bins]`.
    """

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        bins = n_fft // 2 + 1
        window = periodic_hann(n_fft).astype(np.float64)
        # k*n reduced mod n_fft keeps the angles small, so the basis is accurate to float64 rounding.
        angle = 2.0 * np.pi * ((np.arange(bins)[:, None] * np.arange(n_fft)[None, :]) % n_fft) / n_fft
        analysis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window
        # Inverse real DFT: interior bins count twice, DC and Nyquist once; their imaginary rows are sin(0)=0.
        weight = np.full(bins, 2.0)
        weight[0] = weight[-1] = 1.0
        synthesis = np.concatenate([np.cos(angle), -np.sin(angle)]) * np.concatenate([weight, weight])[:, None]
        synthesis = synthesis / n_fft * window
        # Not persistent: the checkpoint has no such keys.
        self.register_buffer("analysis", _conv_kernel(analysis), persistent=False)
        self.register_buffer("synthesis", _conv_kernel(synthesis), persistent=False)
        self.register_buffer("window_sq", _conv_kernel(window[None, :] ** 2), persistent=False)
        self.register_buffer("window", torch.from_numpy(periodic_hann(n_fft)), persistent=False)
        self.use_torch_fft = False

    def stft(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S] -> [B, 2*(n_fft/2+1), S/hop + 1]."""
        if self.use_torch_fft:
            spec = torch.stft(x, self.n_fft, self.hop, self.n_fft, window=self.window, return_complex=True)
            return torch.cat([spec.real, spec.imag], dim=1)
        half = self.n_fft // 2
        padded = F.pad(x.unsqueeze(1), (half, half), mode="reflect")
        return F.conv1d(padded, self.analysis, stride=self.hop)

    def istft(self, spec: torch.Tensor) -> torch.Tensor:
        """[B, 2*(n_fft/2+1), F] -> [B, hop*(F-1)]: overlap-add, window-envelope normalisation, centre trim."""
        if self.use_torch_fft:
            bins = self.n_fft // 2 + 1
            spec = torch.complex(spec[:, :bins], spec[:, bins:])
            return torch.istft(spec, self.n_fft, self.hop, self.n_fft, window=self.window)
        frames = F.conv_transpose1d(spec, self.synthesis, stride=self.hop)
        envelope = F.conv_transpose1d(torch.ones_like(spec[:, :1]), self.window_sq, stride=self.hop)
        half = self.n_fft // 2
        end = frames.shape[-1] - half
        return frames[:, 0, half:end] / envelope[:, 0, half:end]


class PaddedConv1d(nn.Conv1d):
    """Conv1d with explicit zero padding `left`/`right`; the right padding may be replaced by real context.

    Covers the official CausalConv1d ('left'/'right'), CausalConv1dDownSample and plain same-padded convs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 left: int = 0, right: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)
        self.left, self.right = left, right

    def forward(self, x: torch.Tensor, right_context: torch.Tensor | None = None) -> torch.Tensor:
        if right_context is None:
            x = F.pad(x, (self.left, self.right))
        else:
            x = torch.cat([F.pad(x, (self.left, 0)), right_context], dim=2)
        return super().forward(x)


class CausalUpsampleConv1d(PaddedConv1d):
    """The official CausalConv1dUpsample: nearest upsampling by `stride`, then a left-padded conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__(in_channels, out_channels, kernel_size, left=kernel_size - 1)
        self.factor = stride

    def forward(self, x: torch.Tensor, right_context: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(repeat_frames(x, self.factor), right_context)


def _conv(cfg: HiFTConfig, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> PaddedConv1d:
    """Stride-1 conv that is left-causal (CV3) or same-padded (CV2)."""
    span = (kernel_size - 1) * dilation
    left, right = (span, 0) if cfg.causal else (span // 2, span - span // 2)
    return PaddedConv1d(in_channels, out_channels, kernel_size, dilation=dilation, left=left, right=right)


class Snake(nn.Module):
    """x + sin²(αx)/α with a per-channel linear-scale α (the official adds 1e-9 to α)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.unsqueeze(0).unsqueeze(-1)
        return x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha).pow(2)


class ResBlock(nn.Module):
    """Three (Snake, dilated conv, Snake, conv) residual units."""

    def __init__(self, cfg: HiFTConfig, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(weight_norm(_conv(cfg, channels, channels, kernel_size, d)) for d in dilations)
        self.convs2 = nn.ModuleList(weight_norm(_conv(cfg, channels, channels, kernel_size)) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for act1, conv1, act2, conv2 in zip(self.activations1, self.convs1, self.activations2, self.convs2):
            x = conv2(act2(conv1(act1(x)))) + x
        return x


# --------------------------------------------------------------------------- f0 predictor and NSF source


class F0Predictor(nn.Module):
    """Mel -> f0 in Hz: five convs with ELU, a linear head, |·|. CV3: first conv looks 3 frames ahead."""

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        cond = cfg.f0_cond_channels
        if cfg.causal:
            first = PaddedConv1d(cfg.in_channels, cond, F0_LOOK_RIGHT + 1, right=F0_LOOK_RIGHT)
        else:
            first = PaddedConv1d(cfg.in_channels, cond, 3, left=1, right=1)
        layers: list[nn.Module] = [weight_norm(first), nn.ELU()]
        for _ in range(4):
            layers += [weight_norm(_conv(cfg, cond, cond, 3)), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond, 1)

    def forward(self, mel: torch.Tensor, finalize: bool = True) -> torch.Tensor:
        """[B, C, T] -> [B, T] (finalize) or [B, T - 3] (the last 3 frames are look-ahead only)."""
        first, rest = self.condnet[0], self.condnet[1:]
        if finalize:
            x = first(mel)
        else:
            x = first(mel[:, :, :-first.right], right_context=mel[:, :, -first.right:])
        x = rest(x).transpose(1, 2)
        return torch.abs(self.classifier(x).squeeze(-1))


class NeuralSource(nn.Module):
    """NSF harmonic source (official SourceModuleHnNSF + SineGen2), with the noise given by the caller."""

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.harmonics = cfg.nb_harmonics + 1
        self.sampling_rate = cfg.sampling_rate
        self.frame_samples = cfg.hop_samples
        self.sine_amp, self.noise_std = cfg.nsf_alpha, cfg.nsf_sigma
        self.voiced_threshold = cfg.nsf_voiced_threshold
        self.hold_phase = cfg.causal
        self.l_linear = nn.Linear(self.harmonics, 1)

    def forward(self, f0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """f0 [1, T] (Hz, one value per mel frame), noise [1, >=L, harmonics] -> source [1, 1, L], L = T*hop."""
        scale = self.frame_samples
        f0 = f0.unsqueeze(-1)  # [1, T, 1]
        harmonic_numbers = torch.arange(1, self.harmonics + 1, dtype=f0.dtype, device=f0.device)
        # The official computes this per sample and then linearly resamples to one value per frame, taking the
        # mean of two samples of the same frame; with f0 held over the frame that is the frame's own value.
        rad = (f0 * harmonic_numbers / self.sampling_rate) % 1
        # torch's CPU cumsum of float32 keeps a float64 running sum; spelt out so that an exported graph does
        # the same (ONNX Runtime's float32 CumSum does not: 10 s of audio then lose ~60 dB of SNR vs torch).
        phase = torch.cumsum(rad.double(), dim=1).to(rad.dtype) * 2 * math.pi  # [1, T, H]
        if self.hold_phase:
            # CV3 upsamples the phase with 'nearest': sin(phase) is constant over each frame.
            phase = repeat_frames(phase.transpose(1, 2) * scale, scale).transpose(1, 2)
        else:
            phase = F.interpolate(phase.transpose(1, 2) * scale, scale_factor=scale, mode="linear").transpose(1, 2)
        sines = torch.sin(phase) * self.sine_amp
        f0_samples = repeat_frames(f0.transpose(1, 2), scale).transpose(1, 2)  # [1, L, 1]
        uv = (f0_samples > self.voiced_threshold).to(sines.dtype)
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        excitation = sines * uv + noise_amp * noise[:, :sines.shape[1]]
        return torch.tanh(self.l_linear(excitation)).transpose(1, 2)


# --------------------------------------------------------------------------- generator


class CausalHiFT(nn.Module):
    """HiFT generator with the official parameter names. `cfg.causal` selects CV3 (`CausalHiFTGenerator`) or
    CV2 (`HiFTGenerator`, which also takes a source cache when streaming)."""

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.cfg = cfg
        base, rates = cfg.base_channels, cfg.upsample_rates
        self.spec_frames_per_mel = int(np.prod(rates))  # STFT frames per mel frame
        self.m_source = NeuralSource(cfg)
        if cfg.causal:
            look = cfg.conv_pre_look_right
            conv_pre = PaddedConv1d(cfg.in_channels, base, look + 1, right=look)
        else:
            conv_pre = PaddedConv1d(cfg.in_channels, base, 7, left=3, right=3)
        self.conv_pre = weight_norm(conv_pre)

        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = base >> i, base >> (i + 1)
            if cfg.causal:
                up: nn.Module = CausalUpsampleConv1d(c_in, c_out, kernel, rate)
            else:
                up = nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2)
            self.ups.append(weight_norm(up))

        spec_channels = cfg.istft_n_fft + 2
        # Stage i fuses the source spectrum downsampled by the product of the later upsample rates.
        down_rates = [int(np.prod(rates[i + 1:])) for i in range(len(rates))]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (rate, kernel, dilations) in enumerate(
                zip(down_rates, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes)):
            channels = base >> (i + 1)
            if rate == 1:
                down = PaddedConv1d(spec_channels, channels, 1)
            elif cfg.causal:
                down = PaddedConv1d(spec_channels, channels, 2 * rate, stride=rate, left=rate - 1)
            else:
                down = PaddedConv1d(spec_channels, channels, 2 * rate, stride=rate, left=rate // 2, right=rate // 2)
            self.source_downs.append(down)
            self.source_resblocks.append(ResBlock(cfg, channels, kernel, tuple(dilations)))

        self.resblocks = nn.ModuleList(
            ResBlock(cfg, base >> (i + 1), kernel, tuple(dilations))
            for i in range(len(rates))
            for kernel, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = weight_norm(_conv(cfg, base >> len(rates), spec_channels, 7))
        self.stft = ConvSTFT(cfg.istft_n_fft, cfg.istft_hop)
        # CV3 runs the f0 predictor in float64 ("precision is crucial for causal inference"). The official casts
        # module and input on every call; holding it in float64 from the start gives the same numbers.
        self.f0_predictor = F0Predictor(cfg).to(torch.float64) if cfg.causal else F0Predictor(cfg)

    def predict_f0(self, mel: torch.Tensor, finalize: bool) -> torch.Tensor:
        """mel [1, C, T] -> f0 [1, T] (or [1, T-3] when not finalized), in mel's dtype.

        Runs in the predictor's own dtype: float64 for CV3. ONNX Runtime's CPU Conv has no float64 kernel,
        so an export for it needs `f0_predictor.float()` first (at some cost in exactness).
        """
        dtype = self.f0_predictor.classifier.weight.dtype
        return self.f0_predictor(mel.to(dtype), finalize=finalize).to(mel.dtype)

    def decode(self, mel: torch.Tensor, source: torch.Tensor, finalize: bool) -> torch.Tensor:
        """mel [1, C, T'] + source [1, 1, L] -> speech [1, S]. Not finalized: the last `conv_pre_look_right`
        frames are right context only and the output drops one more frame of samples."""
        cfg = self.cfg
        spec = self.stft.stft(source.squeeze(1))
        if finalize:
            x = self.conv_pre(mel)
        else:
            look = cfg.conv_pre_look_right
            x = self.conv_pre(mel[:, :, :-look], right_context=mel[:, :, -look:])
            spec = spec[:, :, :-self.spec_frames_per_mel * look]

        stages = len(self.ups)
        kernels = len(cfg.resblock_kernel_sizes)
        for i in range(stages):
            x = self.ups[i](F.leaky_relu(x, cfg.lrelu_slope))
            if i == stages - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](spec))
            mixed = self.resblocks[i * kernels](x)
            for j in range(1, kernels):
                mixed = mixed + self.resblocks[i * kernels + j](x)
            x = mixed / kernels

        # The official uses leaky_relu's default slope 0.01 here, not lrelu_slope.
        x = self.conv_post(F.leaky_relu(x))
        bins = cfg.istft_n_fft // 2 + 1
        magnitude = torch.clip(torch.exp(x[:, :bins]), max=1e2)
        # The official feeds sin(raw) as the phase.
        phase = torch.sin(x[:, bins:])
        speech = self.stft.istft(torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1))
        if not finalize:
            speech = speech[:, :-cfg.hop_samples]
        return torch.clamp(speech, -cfg.audio_limit, cfg.audio_limit)

    def source_samples(self, frames: int, finalize: bool) -> int:
        """Length of the NSF source (and of the noise used) for `frames` mel frames."""
        return self.cfg.hop_samples * (frames if finalize else frames - F0_LOOK_RIGHT)

    def forward(self, mel: torch.Tensor, finalize: bool, sine_noise: torch.Tensor,
                cache_source: torch.Tensor | None = None) -> torch.Tensor:
        """mel [1, C, T], sine_noise [1, >=L, harmonics] -> speech [1, 480*T] (finalize) or [1, 480*(T-8)]."""
        return self.synthesize(mel, finalize, sine_noise, cache_source)[0]

    def synthesize(self, mel: torch.Tensor, finalize: bool, sine_noise: torch.Tensor,
                   cache_source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(speech, the NSF source [1, 1, L] it was made from).

        cache_source [1, 1, C] (CV2 only, the official `inference(cache_source=...)`): the first C source samples
        are replaced by the previous streaming call's last ones, so the overlapping audio has the same excitation.
        """
        frames = mel.shape[2]
        if not finalize and not self.cfg.causal:
            raise ValueError("the non-causal (CosyVoice2) HiFT has no look-ahead mode; call it with finalize=True")
        if cache_source is not None and self.cfg.causal:
            raise ValueError("only the non-causal (CosyVoice2) HiFT takes a source cache")
        needed = vocoder_source_samples(self.cfg, frames, finalize, sine_noise.shape[1])
        if cache_source is not None and cache_source.shape[2] > needed:
            raise ValueError(f"cache_source has {cache_source.shape[2]} samples; {frames} frames make only {needed}")
        f0 = self.predict_f0(mel, finalize)
        source = self.m_source(f0, sine_noise[:, :needed])
        if cache_source is not None:
            source = splice_source(source, cache_source)
        if not finalize:
            mel = mel[:, :, :-F0_LOOK_RIGHT]
        return self.decode(mel, source, finalize), source


def splice_source(source: torch.Tensor, cache_source: torch.Tensor) -> torch.Tensor:
    """source [1, 1, L] with its first C samples replaced by cache_source [1, 1, C].

    A concat rather than an in-place write, so that an exported graph takes any cache length, zero included.
    """
    return torch.cat([cache_source.to(source.dtype), source[:, :, cache_source.shape[2]:]], dim=2)


def load_hift_state_dict(module: CausalHiFT, state: dict[str, torch.Tensor]) -> None:
    """Strict load; strips the GAN wrapper's `generator.` from keys. Legacy weight_g/weight_v keys are
    converted by torch's weight-norm load hook."""
    module.load_state_dict({key.replace("generator.", ""): value for key, value in state.items()}, strict=True)


# --------------------------------------------------------------------------- VocoderStage


class TorchVocoder:
    """VocoderStage on a CausalHiFT module (numpy in, numpy out).

    `exact_fft` (default) runs torch.stft/istft like the official code, so the output is bit-identical
    to it; False runs the exportable DFT convolutions, i.e. the graph the ONNX export holds.
    """

    backend = "torch"

    def __init__(self, hift: CausalHiFT, device: str | torch.device = "cpu", exact_fft: bool = True):
        self.device = torch.device(device)
        self.hift = hift.to(self.device).eval()
        self.hift.stft.use_torch_fft = exact_fft

    def _inputs(self, mel: np.ndarray, sine_noise: np.ndarray, finalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        needed = self.hift.source_samples(mel.shape[2], finalize)
        mel_t = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)).to(self.device)
        # np.array copies: the noise cache is read-only and torch wants writable memory.
        noise_t = torch.from_numpy(np.array(sine_noise[:, :needed], dtype=np.float32)).to(self.device)
        return mel_t, noise_t

    @torch.inference_mode()
    def vocode(self, mel: np.ndarray, finalize: bool, sine_noise: np.ndarray) -> np.ndarray:
        mel_t, noise_t = self._inputs(mel, sine_noise, finalize)
        return self.hift(mel_t, finalize, noise_t).cpu().numpy()

    @torch.inference_mode()
    def vocode_with_source(self, mel: np.ndarray, sine_noise: np.ndarray,
                           cache_source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mel_t, noise_t = self._inputs(mel, sine_noise, True)
        cache_t = torch.from_numpy(np.array(cache_source, dtype=np.float32).reshape(1, 1, -1)).to(self.device)
        speech, source = self.hift.synthesize(mel_t, True, noise_t, cache_t)
        return speech.cpu().numpy(), source.cpu().numpy()

"""Tests of the PyTorch HiFT vocoder: checkpoint layout, STFT/iSTFT, NSF source and causal streaming."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosyvoice_onnx.config import HiFTConfig
from cosyvoice_onnx.torch_backend.hift import (ConvSTFT, CausalHiFT, TorchVocoder, load_hift_state_dict,
                                               periodic_hann, repeat_frames)

HOP = 480


def tiny_config(**overrides) -> HiFTConfig:
    return HiFTConfig(base_channels=32, f0_cond_channels=32, **overrides)


def tiny_model(seed: int = 0, voiced_hz: float = 120.0) -> CausalHiFT:
    """Random weights with Snake alphas away from 1 and an f0 head that yields voiced and unvoiced frames."""
    torch.manual_seed(seed)
    model = CausalHiFT(tiny_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.3, 3.0)
            elif name.endswith("original1"):
                p.add_(torch.randn_like(p) * p.std())
        model.f0_predictor.classifier.weight.mul_(40)
        model.f0_predictor.classifier.bias.fill_(voiced_hz)
    return model


def uniform_noise(samples: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, samples, 9, generator=torch.Generator().manual_seed(seed))


def random_mel(frames: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(seed)) * 2 - 5


# --------------------------------------------------------------------------- checkpoint layout


@pytest.mark.parametrize("causal, params, conv_pre_k, ups0", [
    (True, 20_779_887, 5, [(256, 1, 1), (256, 512, 16)]),
    # CosyVoice2: ConvTranspose ups, weight norm over the input-channel dim.
    (False, 20_821_295, 7, [(512, 1, 1), (512, 256, 16)]),
])
def test_real_config_state_dict_matches_official_layout(causal, params, conv_pre_k, ups0):
    with torch.device("meta"):
        state = CausalHiFT(HiFTConfig(causal=causal)).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert len(shapes) == 328
    assert sum(math.prod(s) for s in shapes.values()) == params
    assert shapes["conv_pre.parametrizations.weight.original1"] == (512, 80, conv_pre_k)
    ups0_keys = ("ups.0.parametrizations.weight.original0", "ups.0.parametrizations.weight.original1")
    assert [shapes[k] for k in ups0_keys] == ups0
    expected = {
        "m_source.l_linear.weight": (1, 9), "m_source.l_linear.bias": (1,),
        "ups.2.parametrizations.weight.original1": (64, 128, 7) if causal else (128, 64, 7),
        "source_downs.0.weight": (256, 18, 30), "source_downs.1.weight": (128, 18, 6),
        "source_downs.2.weight": (64, 18, 1),
        "source_resblocks.2.convs1.2.parametrizations.weight.original1": (64, 64, 11),
        "resblocks.4.convs2.0.parametrizations.weight.original1": (128, 128, 7),
        "resblocks.8.activations2.2.alpha": (64,),
        "conv_post.parametrizations.weight.original1": (18, 64, 7),
        "f0_predictor.condnet.8.parametrizations.weight.original0": (512, 1, 1),
        "f0_predictor.classifier.weight": (1, 512),
    }
    assert {k: shapes[k] for k in expected} == expected


def test_legacy_weight_norm_keys_and_generator_prefix_load():
    source = tiny_model(seed=3)
    legacy = {}
    for key, value in source.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        legacy["generator." + key] = value
    assert any(k.endswith("weight_g") for k in legacy)
    target = CausalHiFT(tiny_config())
    load_hift_state_dict(target, legacy)
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


def test_strict_load_rejects_missing_keys():
    state = tiny_model().state_dict()
    state.pop("conv_post.bias")
    with pytest.raises(RuntimeError, match="conv_post.bias"):
        load_hift_state_dict(CausalHiFT(tiny_config()), state)


# --------------------------------------------------------------------------- STFT / iSTFT


def test_window_is_scipys_periodic_hann():
    scipy_signal = pytest.importorskip("scipy.signal")
    expected = scipy_signal.get_window("hann", 16, fftbins=True).astype(np.float32)
    np.testing.assert_array_equal(periodic_hann(16), expected)


def test_conv_stft_matches_torch_stft():
    stft = ConvSTFT(16, 4)
    x = torch.randn(2, 4800, generator=torch.Generator().manual_seed(0))
    ref = torch.stft(x, 16, 4, 16, window=torch.from_numpy(periodic_hann(16)), center=True, pad_mode="reflect",
                     return_complex=True)
    ours = stft.stft(x)
    assert ours.shape == (2, 18, 4800 // 4 + 1)
    torch.testing.assert_close(ours, torch.cat([ref.real, ref.imag], dim=1), rtol=0, atol=2e-6)


def test_conv_istft_matches_torch_istft():
    stft = ConvSTFT(16, 4)
    g = torch.Generator().manual_seed(0)
    frames = 1201
    magnitude = torch.exp(torch.randn(1, 9, frames, generator=g)).clip(max=100)
    phase = torch.randn(1, 9, frames, generator=g)
    spec = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
    ref = torch.istft(torch.complex(spec[:, :9], spec[:, 9:]), 16, 4, 16,
                      window=torch.from_numpy(periodic_hann(16)), center=True)
    ours = stft.istft(spec)
    assert ours.shape == (1, 4 * (frames - 1))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=2e-6)


def test_conv_istft_inverts_conv_stft():
    stft = ConvSTFT(16, 4)
    x = torch.randn(1, 4000, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(stft.istft(stft.stft(x)), x, rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- NSF source


@pytest.mark.parametrize("factor, frames", [(480, 15000), (8, 15000), (5, 8 * 15000), (3, 40 * 15000)])
def test_repeat_frames_equals_torch_nearest_upsampling(factor, frames):
    x = torch.arange(frames, dtype=torch.float32).view(1, 1, frames)
    assert torch.equal(repeat_frames(x, factor), F.interpolate(x, scale_factor=factor, mode="nearest"))


def official_source_chain(f0: torch.Tensor, noise: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """The NSF source op chain at the sample rate, with torch's own resampling ops (CV3 settings)."""
    f0_up = F.interpolate(f0[:, None], scale_factor=HOP, mode="nearest").transpose(1, 2)
    fn = f0_up * torch.arange(1, 10, dtype=torch.float32).view(1, 1, 9)
    rad = (fn / 24000) % 1
    rad[:, 0, :] = rad[:, 0, :] + torch.tensor([0.0, .17, .16, .14, .76, .66, .03, .43, .05])
    rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / HOP, mode="linear").transpose(1, 2)
    phase = torch.cumsum(rad, dim=1) * 2 * np.pi
    phase = F.interpolate(phase.transpose(1, 2) * HOP, scale_factor=HOP, mode="nearest").transpose(1, 2)
    sines = torch.sin(phase) * 0.1
    uv = (f0_up > 10).float()
    noise_amp = uv * 0.003 + (1 - uv) * 0.1 / 3
    excitation = sines * uv + noise_amp * noise[:, :sines.shape[1]]
    return torch.tanh(linear(excitation)).transpose(1, 2)


def test_source_equals_official_op_chain_bit_for_bit():
    model = tiny_model()
    g = torch.Generator().manual_seed(4)
    frames = 300
    f0 = torch.where(torch.rand(1, frames, generator=g) > 0.3, 80 + 300 * torch.rand(1, frames, generator=g),
                     torch.full((1, frames), 3.0))
    noise = uniform_noise(frames * HOP)
    with torch.inference_mode():
        ours = model.m_source(f0, noise)
        ref = official_source_chain(f0, noise, model.m_source.l_linear)
    assert ours.shape == (1, 1, frames * HOP)
    assert torch.equal(ours, ref)


def test_voiced_source_sine_is_held_over_each_frame():
    model = tiny_model()
    f0 = torch.tensor([[110.0, 220.0, 330.5]])
    zero_noise = torch.zeros(1, 3 * HOP, 9)
    with torch.inference_mode():
        source = model.m_source(f0, zero_noise)[0, 0].view(3, HOP)
    assert torch.equal(source, source[:, :1].expand(3, HOP))
    rad = (f0.double()[0, :, None] * torch.arange(1, 10) / 24000) % 1
    phase = HOP * 2 * math.pi * torch.cumsum(rad, dim=0)
    w, b = model.m_source.l_linear.weight.double()[0], model.m_source.l_linear.bias.double()
    expected = torch.tanh((0.1 * torch.sin(phase)) @ w + b)
    torch.testing.assert_close(source[:, 0].double(), expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- generator


def causal_conv(conv, x, left=0, right=0, stride=1, dilation=1):
    """A conv with zeros concatenated on either side, as the spec's CausalConv1d describes it."""
    zeros = lambda n: x.new_zeros(x.shape[0], x.shape[1], n)  # noqa: E731
    x = torch.cat([zeros(left), x, zeros(right)], dim=2)
    return F.conv1d(x, conv.weight, conv.bias, stride=stride, dilation=dilation)


def reference_forward(model: CausalHiFT, mel: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The CV3 vocoder (finalize: f0, source, HiFT) in plain torch ops, using the model's weights."""
    cfg = model.cfg
    x = mel.double()
    for i, conv in enumerate(model.f0_predictor.condnet[::2]):
        x = F.elu(causal_conv(conv, x, right=3) if i == 0 else causal_conv(conv, x, left=2))
    f0 = model.f0_predictor.classifier(x.transpose(1, 2)).squeeze(-1).abs().float()
    source = official_source_chain(f0, noise, model.m_source.l_linear)[:, 0]

    def snake(x, alpha):
        alpha = alpha[None, :, None]
        return x + torch.sin(alpha * x) ** 2 / (alpha + 1e-9)

    def resblock(block, x, kernel, dilations):
        for i, d in enumerate(dilations):
            xt = causal_conv(block.convs1[i], snake(x, block.activations1[i].alpha), left=(kernel - 1) * d, dilation=d)
            x = x + causal_conv(block.convs2[i], snake(xt, block.activations2[i].alpha), left=kernel - 1)
        return x

    window = torch.hann_window(16, periodic=True)
    spec = torch.stft(source, 16, 4, 16, window=window, center=True, pad_mode="reflect", return_complex=True)
    spec = torch.cat([spec.real, spec.imag], dim=1)
    x = causal_conv(model.conv_pre, mel, right=4)
    for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
        x = F.interpolate(F.leaky_relu(x, 0.1), scale_factor=rate, mode="nearest")
        x = causal_conv(model.ups[i], x, left=kernel - 1)
        if i == 2:
            x = torch.cat([x[:, :, 1:2], x], dim=2)
        down = model.source_downs[i]
        stride = down.stride[0]
        si = causal_conv(down, spec, left=stride - 1 if stride > 1 else 0, stride=stride)
        x = x + resblock(model.source_resblocks[i], si, cfg.source_resblock_kernel_sizes[i], (1, 3, 5))
        x = torch.stack([resblock(model.resblocks[3 * i + j], x, k, (1, 3, 5))
                         for j, k in enumerate(cfg.resblock_kernel_sizes)]).mean(0)
    x = causal_conv(model.conv_post, F.leaky_relu(x, 0.01), left=6)
    spec = torch.polar(torch.exp(x[:, :9]).clamp(max=100), torch.sin(x[:, 9:]))
    return torch.istft(spec, 16, 4, 16, window=window, center=True).clamp(-0.99, 0.99)


def test_forward_matches_the_spec_written_in_plain_torch_ops():
    model = tiny_model(voiced_hz=60.0)
    frames = 25
    mel, noise = random_mel(frames), uniform_noise(frames * HOP)
    with torch.inference_mode():
        ours = model(mel, True, noise)
        ref = reference_forward(model, mel, noise)
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("torch_fft", [False, True])
def test_lookahead_output_is_a_prefix_of_the_final_output(torch_fft):
    # Not bit-exact: oneDNN picks length-dependent conv kernels (the official code shows the same ~1e-7 drift).
    model = tiny_model()
    model.stft.use_torch_fft = torch_fft
    frames = 30
    mel, noise = random_mel(frames), uniform_noise(frames * HOP)
    with torch.inference_mode():
        final = model(mel, True, noise)
        assert final.shape == (1, HOP * frames)
        for end in (9, 17, frames):
            partial = model(mel[:, :, :end], False, noise)
            assert partial.shape == (1, HOP * (end - 8))
            torch.testing.assert_close(partial, final[:, :partial.shape[1]], rtol=0, atol=1e-6)


def test_conv_dft_and_torch_fft_paths_agree():
    model = tiny_model(voiced_hz=150.0)
    mel, noise = random_mel(40), uniform_noise(40 * HOP)
    with torch.inference_mode():
        conv = model(mel, True, noise)
        model.stft.use_torch_fft = True
        ref = model(mel, True, noise)
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(conv, ref, rtol=0, atol=1e-5)


def test_f0_predictor_runs_in_float64():
    model = tiny_model()
    mel = random_mel(12)
    with torch.inference_mode():
        f0 = model.predict_f0(mel, True)
        ref = model.f0_predictor(mel.double(), True).float()
    assert model.f0_predictor.classifier.weight.dtype == torch.float64
    assert f0.dtype == torch.float32 and f0.shape == (1, 12)
    assert torch.equal(f0, ref)
    assert model.predict_f0(mel, False).shape == (1, 9)


def test_output_is_clamped_to_audio_limit():
    model = tiny_model()
    with torch.no_grad():
        model.conv_post.parametrizations.weight.original0.mul_(1000)
    with torch.inference_mode():
        out = model(random_mel(10), True, uniform_noise(10 * HOP))
    assert out.abs().max().item() == pytest.approx(0.99)


def test_rejects_short_noise_and_too_few_lookahead_frames():
    model = tiny_model()
    with torch.inference_mode():
        with pytest.raises(ValueError, match="sine_noise"):
            model(random_mel(10), True, uniform_noise(10 * HOP - 1))
        with pytest.raises(ValueError, match="at least 8"):
            model(random_mel(7), False, uniform_noise(7 * HOP))


def test_torch_vocoder_stage_numpy_in_out():
    model = tiny_model()
    mel, noise = random_mel(20), uniform_noise(20 * HOP)
    vocoder = TorchVocoder(model)
    assert vocoder.backend == "torch" and model.stft.use_torch_fft
    with torch.inference_mode():
        ref = model(mel, False, noise)
    out = vocoder.vocode(mel.numpy(), False, noise.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (1, HOP * 12)
    np.testing.assert_array_equal(out, ref.numpy())

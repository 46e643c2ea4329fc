"""Tests of the numpy replay of the official CosyVoice3 construction-time RNG (fixed HiFT noise)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cosyvoice_onnx.config import FlowConfig, HiFTConfig, ModelConfig
from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.noise import (HiftNoise, construction_draws, init_genrand_key, normal_draw_count, skip_draws,
                                  torch_seeded_mt19937, uniform_float32)


def real_config() -> ModelConfig:
    return ModelConfig(version=3, yaml_name="cosyvoice3.yaml", speech_tokenizer_file="speech_tokenizer_v3.onnx")


def tiny_config() -> ModelConfig:
    cfg = real_config()
    cfg.flow = FlowConfig(mel_dim=80, vocab_size=97, spk_embed_dim=24, noise_frames=50)
    cfg.hift = HiFTConfig(f0_cond_channels=32, noise_seconds=1)
    return cfg


def torch_replay(cfg: ModelConfig, samples: int):
    """The official construction sequence, replayed with torch's own RNG and default module inits."""
    torch = pytest.importorskip("torch")
    flow, hift = cfg.flow, cfg.hift
    torch.manual_seed(0)
    torch.randn(1, flow.mel_dim, flow.noise_frames)
    torch.nn.Embedding(flow.vocab_size, flow.mel_dim)
    torch.nn.Linear(flow.spk_embed_dim, flow.mel_dim)
    torch.nn.Conv1d(hift.in_channels, hift.f0_cond_channels, 4)
    for _ in range(4):
        torch.nn.Conv1d(hift.f0_cond_channels, hift.f0_cond_channels, 3)
    torch.nn.Linear(hift.f0_cond_channels, 1)
    rand_ini = torch.rand(1, hift.nb_harmonics + 1)
    # torch.rand is serial, so a short draw is the prefix of the official 300 s buffer.
    sine_waves = torch.rand(1, samples, hift.nb_harmonics + 1)
    return rand_ini.numpy(), sine_waves.numpy()


def test_init_genrand_key_equals_numpy_legacy_seeding():
    np.testing.assert_array_equal(init_genrand_key(0), np.random.RandomState(0).get_state()[1])
    np.testing.assert_array_equal(init_genrand_key(1986), np.random.RandomState(1986).get_state()[1])


def test_uniform_replay_equals_torch_rand():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    expected = torch.rand(5000).numpy()
    np.testing.assert_array_equal(uniform_float32(torch_seeded_mt19937(0), 5000), expected)


@pytest.mark.parametrize("numel", [16, 17, 31, 32, 100, 1000, 1024, 1025])
def test_normal_draw_count_matches_torch(numel):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    torch.randn(numel)
    after = torch.rand(8).numpy()
    generator = torch_seeded_mt19937(0)
    skip_draws(generator, normal_draw_count(numel))
    np.testing.assert_array_equal(uniform_float32(generator, 8), after)


def test_small_normal_draws_are_refused():
    with pytest.raises(ValueError):
        normal_draw_count(15)


def replayed_rand_ini(cfg: ModelConfig) -> np.ndarray:
    draws = construction_draws(cfg)
    names = [name for name, _ in draws]
    generator = torch_seeded_mt19937(0)
    skip_draws(generator, sum(count for _, count in draws[:names.index("hift.m_source.l_sin_gen.rand_ini")]))
    return uniform_float32(generator, cfg.hift.nb_harmonics + 1)


def test_real_config_matches_spec_check_values():
    cfg = real_config()
    rand_ini = replayed_rand_ini(cfg)
    rand_ini[0] = 0  # the official zeroes the fundamental's initial phase
    np.testing.assert_allclose(rand_ini, [0, .1710, .1653, .1438, .7629, .6589, .0275, .4348, .0538], atol=5e-5)
    noise = HiftNoise(cfg).sine_noise(4)
    assert noise.shape == (1, 4, 9) and noise.dtype == np.float32
    np.testing.assert_allclose(noise[0, 0, :3], [.9228, .4774, .8271], atol=5e-5)


@pytest.mark.parametrize("make_config", [real_config, tiny_config])
def test_sine_noise_is_bit_identical_to_torch_construction(make_config):
    cfg = make_config()
    samples = 3000
    rand_ini, sine_waves = torch_replay(cfg, samples)
    np.testing.assert_array_equal(replayed_rand_ini(cfg), rand_ini[0])
    np.testing.assert_array_equal(HiftNoise(cfg).sine_noise(samples), sine_waves)


def test_lazy_extension_keeps_one_consistent_prefix():
    cfg = tiny_config()
    noise = HiftNoise(cfg)
    first = noise.sine_noise(7).copy()
    longer = noise.sine_noise(2000)
    again = noise.sine_noise(300)
    reference = HiftNoise(cfg).sine_noise(2000)
    np.testing.assert_array_equal(longer, reference)
    np.testing.assert_array_equal(first, reference[:, :7])
    np.testing.assert_array_equal(again, reference[:, :300])
    assert not longer.flags.writeable


def test_buffer_limit_is_reported():
    assert HiftNoise(real_config()).max_samples == 300 * 24000
    noise = HiftNoise(tiny_config())
    assert noise.sine_noise(24000).shape == (1, 24000, 9)
    with pytest.raises(InputError, match="at most 24000 samples"):
        noise.sine_noise(24001)


def test_noise_module_works_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from cosyvoice_onnx.config import ModelConfig\n"
            "from cosyvoice_onnx.noise import HiftNoise\n"
            "cfg = ModelConfig(version=3, yaml_name='y', speech_tokenizer_file='t')\n"
            "print(HiftNoise(cfg).sine_noise(1)[0, 0, 0])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(.9228, abs=5e-5)

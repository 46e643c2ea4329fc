"""Tests for the CosyVoice3 flow: DiT estimator, token encoder, CFM solver and token-to-mel driver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosyvoice_onnx.config import FlowConfig
from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.flow_solver import cosine_time_grid, solve_cfm, token_to_mel
from cosyvoice_onnx.torch_backend.flow import (
    DiT, CausalFlow, TorchFlow, apply_interleaved_rotary, attention_mask, flow_noise_buffer_torch,
    sinusoidal_time_features,
)

TINY = FlowConfig(vocab_size=50, pre_lookahead_channels=32, dit_dim=64, dit_depth=2, dit_heads=4, dit_dim_head=16,
                  conv_pos_kernel=5, conv_pos_groups=4, static_chunk_size=50)


def randomized(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Random values for every parameter (the RoPE buffer stays), so no weight is accidentally zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


@pytest.fixture(scope="module")
def tiny_flow() -> CausalFlow:
    return randomized(CausalFlow(TINY))


# --------------------------------------------------------------------------- layout


def test_state_dict_matches_official_flow_pt_layout():
    with torch.device("meta"):
        flow = CausalFlow(FlowConfig())
    shapes = {k: tuple(v.shape) for k, v in flow.state_dict().items()}
    assert len(shapes) == 330
    assert sum(math.prod(s) for s in shapes.values()) == 332_257_120
    expected = {
        "input_embedding.weight": (6561, 80),
        "spk_embed_affine_layer.weight": (80, 192),
        "pre_lookahead_layer.conv1.weight": (1024, 80, 4),
        "pre_lookahead_layer.conv2.weight": (80, 1024, 3),
        "decoder.estimator.time_embed.time_mlp.0.weight": (1024, 256),
        "decoder.estimator.time_embed.time_mlp.2.weight": (1024, 1024),
        "decoder.estimator.input_embed.proj.weight": (1024, 320),
        "decoder.estimator.input_embed.conv_pos_embed.conv1.0.weight": (1024, 64, 31),
        "decoder.estimator.input_embed.conv_pos_embed.conv2.0.bias": (1024,),
        "decoder.estimator.rotary_embed.inv_freq": (32,),
        "decoder.estimator.transformer_blocks.21.attn_norm.linear.weight": (6144, 1024),
        "decoder.estimator.transformer_blocks.0.attn.to_out.0.weight": (1024, 1024),
        "decoder.estimator.transformer_blocks.0.ff.ff.0.0.weight": (2048, 1024),
        "decoder.estimator.transformer_blocks.0.ff.ff.2.weight": (1024, 2048),
        "decoder.estimator.norm_out.linear.weight": (2048, 1024),
        "decoder.estimator.proj_out.bias": (80,),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert "decoder.estimator.transformer_blocks.22.attn.to_q.weight" not in shapes


# --------------------------------------------------------------------------- DiT pieces


def naive_rotary(x: torch.Tensor, rot_dim: int) -> torch.Tensor:
    """Element-by-element interleaved RoPE in float64, base 10000."""
    out = x.double().clone()
    for n in range(x.shape[1]):
        for i in range(rot_dim // 2):
            theta = n * 10000.0 ** (-2 * i / rot_dim)
            a, b = x[:, n, 2 * i].double(), x[:, n, 2 * i + 1].double()
            out[:, n, 2 * i] = a * math.cos(theta) - b * math.sin(theta)
            out[:, n, 2 * i + 1] = b * math.cos(theta) + a * math.sin(theta)
    return out


def test_rotary_is_interleaved_and_only_on_head_zero():
    dit = DiT(TINY)
    rot_dim = TINY.dit_dim_head
    inv_freq = 10000.0 ** (-np.arange(0, rot_dim, 2) / rot_dim)
    np.testing.assert_allclose(dit.rotary_embed.inv_freq.numpy(), inv_freq, rtol=1e-6)
    x = torch.randn(2, 30, TINY.dit_heads * TINY.dit_dim_head)
    got = apply_interleaved_rotary(x, dit.rotary_embed(30))
    torch.testing.assert_close(got.double(), naive_rotary(x, rot_dim), atol=1e-5, rtol=0)
    assert torch.equal(got[..., rot_dim:], x[..., rot_dim:])
    assert not torch.allclose(got[:, 1:, :rot_dim], x[:, 1:, :rot_dim])


def test_sinusoidal_time_features_sin_first_with_1000_scale():
    t = torch.tensor([0.0, 0.3, 0.97])
    got = sinusoidal_time_features(t, 256).double()
    freqs = np.exp(-np.arange(128) * math.log(10000) / 127)
    args = 1000.0 * t.double().numpy()[:, None] * freqs[None]
    np.testing.assert_allclose(got.numpy(), np.concatenate([np.sin(args), np.cos(args)], axis=1), atol=2e-4)


def test_chunk_mask_semantics():
    seq_len, chunk = 23, 5
    valid = torch.ones(2, seq_len, dtype=torch.bool)
    valid[1, 17:] = False
    mask = attention_mask(valid, chunk)
    assert mask.shape == (2, 1, seq_len, seq_len)
    for b in range(2):
        for i in range(seq_len):
            for j in range(seq_len):
                assert mask[b, 0, i, j] == (j < (i // chunk + 1) * chunk and bool(valid[b, j])), (b, i, j)
    full = attention_mask(valid, 0)
    assert torch.equal(full[:, 0], valid[:, None, :].expand(-1, seq_len, -1))
    nothing_valid = attention_mask(torch.zeros(1, 4, dtype=torch.bool), 2)
    assert nothing_valid.all()


def naive_dit(dit: DiT, x, mask, mu, t, spks, cond, chunk: int) -> torch.Tensor:
    """Float64 reference of the DiT written from the spec with explicit per-head softmax attention."""
    d = {k: v.double() for k, v in dit.state_dict().items()}
    lin = lambda h, name: h @ d[name + ".weight"].T + d[name + ".bias"]  # noqa: E731
    ln = lambda h: (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6)  # noqa: E731
    silu = lambda h: h * torch.sigmoid(h)  # noqa: E731
    heads, dh = TINY.dit_heads, TINY.dit_dim_head
    x, mu, cond, spks, t = (a.double() for a in (x, mu, cond, spks, t))
    batch, _, seq_len = x.shape
    freqs = torch.exp(-torch.arange(128, dtype=torch.float64) * math.log(10000) / 127)
    args = 1000 * t[:, None] * freqs[None]
    temb = lin(silu(lin(torch.cat([args.sin(), args.cos()], 1), "time_embed.time_mlp.0")), "time_embed.time_mlp.2")
    h = lin(torch.cat([x, cond, mu, spks[:, :, None].expand(-1, -1, seq_len)], 1).transpose(1, 2), "input_embed.proj")
    conv = h.transpose(1, 2)
    for name in ("conv1", "conv2"):
        conv = F.conv1d(F.pad(conv, (TINY.conv_pos_kernel - 1, 0)), d[f"input_embed.conv_pos_embed.{name}.0.weight"],
                        d[f"input_embed.conv_pos_embed.{name}.0.bias"], groups=TINY.conv_pos_groups)
        conv = conv * torch.tanh(F.softplus(conv))
    h = h + conv.transpose(1, 2)
    valid = mask[:, 0].bool()
    for blk in range(TINY.dit_depth):
        p = f"transformer_blocks.{blk}."
        sh1, sc1, g1, sh2, sc2, g2 = lin(silu(temb), p + "attn_norm.linear").chunk(6, dim=1)
        n = ln(h) * (1 + sc1[:, None]) + sh1[:, None]
        q, k, v = (lin(n, p + f"attn.to_{c}") for c in "qkv")
        q, k = naive_rotary(q, dh), naive_rotary(k, dh)
        out = torch.zeros_like(q)
        for b in range(batch):
            for i in range(seq_len):
                visible = [j for j in range(seq_len) if valid[b, j] and (chunk == 0 or j < (i // chunk + 1) * chunk)]
                for hd in range(heads):
                    s = slice(hd * dh, (hd + 1) * dh)
                    w = torch.softmax(torch.stack([q[b, i, s] @ k[b, j, s] for j in visible]) / math.sqrt(dh), 0)
                    out[b, i, s] = sum(wj * v[b, j, s] for wj, j in zip(w, visible))
        attn = lin(out, p + "attn.to_out.0") * valid[:, :, None]
        h = h + g1[:, None] * attn
        m = ln(h) * (1 + sc2[:, None]) + sh2[:, None]
        m = lin(m, p + "ff.ff.0.0")
        m = 0.5 * m * (1 + torch.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m ** 3)))
        h = h + g2[:, None] * lin(m, p + "ff.ff.2")
    scale, shift = lin(silu(temb), "norm_out.linear").chunk(2, dim=1)
    return lin(ln(h) * (1 + scale[:, None]) + shift[:, None], "proj_out").transpose(1, 2)


@pytest.mark.parametrize("streaming", [False, True])
def test_dit_matches_naive_reference(tiny_flow, streaming):
    cfg = FlowConfig(**{**TINY.__dict__, "static_chunk_size": 6})
    dit = DiT(cfg)
    dit.load_state_dict(tiny_flow.estimator.state_dict())
    gen = torch.Generator().manual_seed(1)
    seq_len = 15
    x, mu, cond = (torch.randn(2, 80, seq_len, generator=gen) for _ in range(3))
    mask = torch.ones(2, 1, seq_len)
    mask[1, :, 11:] = 0
    t, spks = torch.tensor([0.25, 0.6]), torch.randn(2, 80, generator=gen)
    with torch.no_grad():
        got = dit(x, mask, mu, t, spks, cond, streaming=streaming)
    want = naive_dit(dit, x, mask, mu, t, spks, cond, chunk=6 if streaming else 0)
    # float32 vs float64 differs by ~7e-6 here; exact-erf GELU instead of tanh would differ by ~8e-5.
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)


def test_padding_does_not_leak_into_valid_frames(tiny_flow):
    gen = torch.Generator().manual_seed(2)
    seq_len, pad = 40, 9
    x, mu, cond = (torch.randn(1, 80, seq_len + pad, generator=gen) for _ in range(3))
    spks, t = torch.randn(1, 80, generator=gen), torch.tensor([0.4])
    mask = torch.ones(1, 1, seq_len + pad)
    mask[..., seq_len:] = 0
    with torch.no_grad():
        for streaming in (False, True):
            padded = tiny_flow.estimator(x, mask, mu, t, spks, cond, streaming=streaming)
            exact = tiny_flow.estimator(x[..., :seq_len], mask[..., :seq_len], mu[..., :seq_len], t, spks,
                                        cond[..., :seq_len], streaming=streaming)
            torch.testing.assert_close(padded[..., :seq_len], exact, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- token encoder, speaker


def naive_pre_lookahead(emb: np.ndarray, flow: CausalFlow, lookahead: int) -> np.ndarray:
    """[N + lookahead, C] embeddings (look-ahead rows last) -> [N, C], frame by frame in float64."""
    layer = flow.pre_lookahead_layer
    w1, b1, w2, b2 = (p.detach().double().numpy() for p in (layer.conv1.weight, layer.conv1.bias,
                                                             layer.conv2.weight, layer.conv2.bias))
    n = emb.shape[0] - lookahead
    hidden = np.stack([np.einsum("ock,kc->o", w1, emb[i:i + lookahead + 1]) + b1 for i in range(n)])
    hidden = np.where(hidden > 0, hidden, 0.01 * hidden)
    hidden = np.concatenate([np.zeros((2, hidden.shape[1])), hidden])
    out = np.stack([np.einsum("ock,kc->o", w2, hidden[i:i + 3]) + b2 for i in range(n)])
    return out + emb[:n]


@pytest.mark.parametrize("finalize", [True, False])
def test_encode_tokens_against_naive(tiny_flow, finalize):
    tokens = np.array([[5, -1, 17, 3, 49, 0, 8, 8, 21]])
    with torch.no_grad():
        mu = tiny_flow.encode_tokens(torch.from_numpy(tokens), finalize).numpy()
    table = tiny_flow.input_embedding.weight.detach().double().numpy()
    emb = table[np.clip(tokens[0], 0, None)]
    if finalize:
        emb = np.concatenate([emb, np.zeros((3, emb.shape[1]))])
    want = naive_pre_lookahead(emb, tiny_flow, 3)
    n_tokens = tokens.shape[1] - (0 if finalize else 3)
    assert mu.shape == (1, 80, 2 * n_tokens)
    np.testing.assert_allclose(mu[0, :, 0::2].T, want, atol=1e-5)
    np.testing.assert_array_equal(mu[..., 0::2], mu[..., 1::2])


def test_embed_speaker_normalizes_then_projects(tiny_flow):
    embedding = np.random.default_rng(3).normal(size=(1, 192)) * 7
    with torch.no_grad():
        got = tiny_flow.embed_speaker(torch.from_numpy(embedding).float()).numpy()
    layer = tiny_flow.spk_embed_affine_layer
    unit = embedding / np.linalg.norm(embedding)
    want = unit @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_noise_buffer_is_the_seed_zero_draw():
    buffer = flow_noise_buffer_torch()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = torch.randn(1, 80, 15000)
    assert buffer.dtype == torch.float32 and torch.equal(buffer, reference)
    np.testing.assert_allclose(buffer[0, 0, :5].numpy(), [-1.1258, -1.1524, -0.2506, -0.4339, 0.8487], atol=1e-4)


# --------------------------------------------------------------------------- solver


def test_cosine_time_grid_matches_torch_float32():
    for n_steps in range(1, 40):
        linear = torch.linspace(0, 1, n_steps + 1, dtype=torch.float32)
        reference = (1 - torch.cos(linear * 0.5 * torch.pi)).numpy()
        grid = cosine_time_grid(n_steps)
        assert grid.dtype == np.float32
        # Within one float32 ulp of the cosine (at most 2**-24 for values in [0.5, 1]).
        assert np.abs(grid - reference).max() <= 2.0 ** -24, n_steps
    ten = cosine_time_grid(10)
    np.testing.assert_array_equal(ten, (1 - torch.cos(torch.linspace(0, 1, 11) * 0.5 * torch.pi)).numpy())
    np.testing.assert_allclose(ten, [0, 0.012312, 0.048943, 0.108993, 0.190983, 0.292893, 0.412215, 0.546009,
                                     0.690983, 0.843566, 1.0], atol=1e-6)


class RecordingStage:
    """FlowStage stub with an analytic velocity; records every estimator call."""

    backend = "stub"

    def __init__(self, velocity):
        self.velocity = velocity
        self.calls = []

    def estimate(self, x, mask, mu, t, spks, cond, streaming):
        self.calls.append(dict(x=x.copy(), mask=mask.copy(), mu=mu.copy(), t=t.copy(), spks=spks.copy(),
                               cond=cond.copy(), streaming=streaming))
        return self.velocity(x, mu, spks, cond)

    def embed_speaker(self, embedding):
        return embedding[:, :80] * 2

    def encode_tokens(self, tokens, finalize, streaming=False):
        n = tokens.shape[1] - (0 if finalize else 3)
        frames = np.repeat(tokens[:, :n].astype(np.float32), 2, axis=1)
        return np.broadcast_to(frames[:, None, :], (1, 80, 2 * n)).copy()


def solver_inputs(seq_len=12, seed=4):
    rng = np.random.default_rng(seed)
    mu, cond, noise = (rng.normal(size=(1, 80, seq_len)).astype(np.float32) for _ in range(3))
    return mu, np.ones((1, 1, seq_len), np.float32), rng.normal(size=(1, 80)).astype(np.float32), cond, noise


def test_solver_linear_decay_matches_closed_form_euler():
    mu, mask, spks, cond, noise = solver_inputs()
    stage = RecordingStage(lambda x, mu, spks, cond: -x)
    out = solve_cfm(stage, mu, mask, spks, cond, noise, n_steps=10, cfg_rate=0.7)
    grid = cosine_time_grid(10).astype(np.float64)
    np.testing.assert_allclose(out, noise * np.prod(1 - np.diff(grid)), rtol=1e-5)
    np.testing.assert_allclose([c["t"][0] for c in stage.calls], grid[:-1], atol=1e-6)
    assert out.dtype == np.float32 and len(stage.calls) == 10


def test_solver_guidance_uses_zeroed_conditioning_in_row_one():
    mu, mask, spks, cond, noise = solver_inputs()
    bias, rate = 0.5, 0.7
    stage = RecordingStage(lambda x, mu, spks, cond: mu + spks[:, :, None] + cond + bias)
    out = solve_cfm(stage, mu, mask, spks, cond, noise, n_steps=10, cfg_rate=rate, streaming=True)
    # Row 1 sees only the bias, so v = (1 + r)(mu + spks + cond + bias) - r * bias over a unit of time.
    np.testing.assert_allclose(out, noise + (1 + rate) * (mu + spks[:, :, None] + cond) + bias, atol=1e-5)
    for call in stage.calls:
        assert call["streaming"] is True
        np.testing.assert_array_equal(call["x"][0], call["x"][1])
        np.testing.assert_array_equal(call["mu"], np.concatenate([mu, np.zeros_like(mu)]))
        np.testing.assert_array_equal(call["spks"], np.concatenate([spks, np.zeros_like(spks)]))
        np.testing.assert_array_equal(call["cond"], np.concatenate([cond, np.zeros_like(cond)]))
        np.testing.assert_array_equal(call["mask"], np.concatenate([mask, mask]))
        assert call["t"][0] == call["t"][1]


def test_token_to_mel_builds_inputs_and_drops_prompt_frames():
    stage = RecordingStage(lambda x, mu, spks, cond: np.zeros_like(x))
    prompt_tokens, tokens = np.array([[7, 8]]), np.array([[1, 2, 3, 4, 5]])
    prompt_feat = np.random.default_rng(5).normal(size=(1, 4, 80)).astype(np.float32)
    embedding = np.arange(192, dtype=np.float32)[None] / 100
    noise = np.random.default_rng(6).normal(size=(1, 80, 30)).astype(np.float32)
    mel = token_to_mel(stage, tokens, prompt_tokens, prompt_feat, embedding, noise, streaming=True, finalize=False,
                       cfg=TINY)
    # Zero velocity: the output is the noise itself, (2 + 5 - 3) tokens * 2 frames minus 4 prompt frames.
    np.testing.assert_array_equal(mel, noise[:, :, 4:8])
    call = stage.calls[0]
    np.testing.assert_array_equal(call["mu"][0, 0], [7, 7, 8, 8, 1, 1, 2, 2])
    np.testing.assert_array_equal(call["cond"][0, :, :4], prompt_feat[0].T)
    assert not call["cond"][0, :, 4:].any()
    np.testing.assert_array_equal(call["spks"][0], embedding[0, :80] * 2)
    with pytest.raises(InputError, match="noise"):
        token_to_mel(stage, np.ones((1, 20), np.int64), prompt_tokens, prompt_feat, embedding, noise,
                     streaming=False, finalize=True, cfg=TINY)


# --------------------------------------------------------------------------- full flow


def run_flow(flow, n_tokens, streaming, finalize, seed=8):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, TINY.vocab_size, size=(1, 70))
    prompt_tokens = rng.integers(0, TINY.vocab_size, size=(1, 10))
    prompt_feat = rng.normal(size=(1, 20, 80)).astype(np.float32)
    embedding = rng.normal(size=(1, 192)).astype(np.float32)
    noise = flow_noise_buffer_torch().numpy()
    return token_to_mel(TorchFlow(flow), tokens[:, :n_tokens], prompt_tokens, prompt_feat, embedding, noise,
                        streaming=streaming, finalize=finalize, cfg=TINY)


def test_streaming_prefix_matches_longer_streaming_run(tiny_flow):
    # 10 prompt + 18 tokens, 3 of them look-ahead: 25 tokens = one 50-frame chunk, 30 frames after the prompt.
    prefix = run_flow(tiny_flow, 18, streaming=True, finalize=False)
    longer = run_flow(tiny_flow, 68, streaming=True, finalize=False)
    assert prefix.shape == (1, 80, 30) and longer.shape == (1, 80, 130)
    np.testing.assert_allclose(prefix, longer[:, :, :30], atol=1e-5)
    # Without chunk masks the prefix sees less context than the longer run, so the frames differ.
    full_prefix = run_flow(tiny_flow, 18, streaming=False, finalize=False)
    full_longer = run_flow(tiny_flow, 68, streaming=False, finalize=False)
    assert np.abs(full_prefix - full_longer[:, :, :30]).max() > 1e-3


def test_flow_is_deterministic(tiny_flow):
    first = run_flow(tiny_flow, 40, streaming=False, finalize=True)
    second = run_flow(tiny_flow, 40, streaming=False, finalize=True)
    assert first.shape == (1, 80, 80) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)

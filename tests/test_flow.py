"""Tests for the flow of each release (CV3: pre-lookahead + DiT; CV2: conformer + UNet), the CFM solver and the
token-to-mel driver. Tests that hold for every release run once per release; the rest test one architecture."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosyvoice_onnx.config import FlowConfig
from cosyvoice_onnx.config_readers import apply_flow_v2_hyperparams
from cosyvoice_onnx.hyperparams import read_hyperparams
from cosyvoice_onnx.releases import RELEASES
from cosyvoice_onnx.errors import InputError, ModelFolderError
from cosyvoice_onnx.flow_solver import cosine_time_grid, solve_cfm, token_to_mel
from cosyvoice_onnx.torch_backend.conformer import rel_shift, relative_position_encoding
from cosyvoice_onnx.torch_backend.flow import (
    DiT, CausalFlow, TorchFlow, apply_interleaved_rotary, attention_mask, flow_noise_buffer_torch,
    sinusoidal_time_features, streaming_attention_mask,
)
from cosyvoice_onnx.torch_backend.flow_v2 import ConformerUNetFlow
from cosyvoice_onnx.torch_backend.loader import FLOW_CLASSES

TINY_DIT = FlowConfig(vocab_size=50, pre_lookahead_channels=32, dit_dim=64, dit_depth=2, dit_heads=4, dit_dim_head=16,
                      conv_pos_kernel=5, conv_pos_groups=4, static_chunk_size=50)
# Real chunk sizes (25 tokens, 50 frames), tiny widths.
TINY_UNET = FlowConfig(kind="conformer_unet", vocab_size=50, encoder_dim=32, encoder_heads=4, encoder_linear_units=48,
                       encoder_num_blocks=2, encoder_num_up_blocks=1, unet_channels=32, unet_n_blocks=2,
                       unet_num_mid_blocks=2, unet_heads=2, unet_head_dim=16)


@dataclass(frozen=True)
class FlowCase:
    """What the tests expect of one flow kind."""

    module: type
    tiny: FlowConfig
    norm_gains_around_one: bool      # random LayerNorm gains around 1 (else around 0, like every other weight)
    keys: int                        # the official flow.pt: number of tensors, of parameters, some shapes
    params: int
    shapes: dict
    absent: tuple
    longer_tokens: int               # a streaming run two chunks longer than 18 tokens after a 10-token prompt
    padding: tuple[int, int]         # estimator length with padding, valid frames
    zeroes_padded_frames: bool       # the estimator's output is exactly zero where the mask is


EST = "decoder.estimator."
CASES = {
    "dit": FlowCase(
        module=CausalFlow, tiny=TINY_DIT, norm_gains_around_one=False, keys=330, params=332_257_120,
        shapes={
            "input_embedding.weight": (6561, 80),
            "spk_embed_affine_layer.weight": (80, 192),
            "pre_lookahead_layer.conv1.weight": (1024, 80, 4),
            "pre_lookahead_layer.conv2.weight": (80, 1024, 3),
            EST + "time_embed.time_mlp.0.weight": (1024, 256),
            EST + "time_embed.time_mlp.2.weight": (1024, 1024),
            EST + "input_embed.proj.weight": (1024, 320),
            EST + "input_embed.conv_pos_embed.conv1.0.weight": (1024, 64, 31),
            EST + "input_embed.conv_pos_embed.conv2.0.bias": (1024,),
            EST + "rotary_embed.inv_freq": (32,),
            EST + "transformer_blocks.21.attn_norm.linear.weight": (6144, 1024),
            EST + "transformer_blocks.0.attn.to_out.0.weight": (1024, 1024),
            EST + "transformer_blocks.0.ff.ff.0.0.weight": (2048, 1024),
            EST + "transformer_blocks.0.ff.ff.2.weight": (1024, 2048),
            EST + "norm_out.linear.weight": (2048, 1024),
            EST + "proj_out.bias": (80,),
        },
        absent=(EST + "transformer_blocks.22.attn.to_q.weight",),
        longer_tokens=68, padding=(49, 40), zeroes_padded_frames=False),
    "conformer_unet": FlowCase(
        module=ConformerUNetFlow, tiny=TINY_UNET, norm_gains_around_one=True, keys=1121, params=112_549_360,
        shapes={
            "input_embedding.weight": (6561, 512),
            "spk_embed_affine_layer.weight": (80, 192),
            "encoder.embed.out.0.weight": (512, 512),
            "encoder.embed.out.1.bias": (512,),
            "encoder.pre_lookahead_layer.conv1.weight": (512, 512, 4),
            "encoder.pre_lookahead_layer.conv2.weight": (512, 512, 3),
            "encoder.encoders.5.self_attn.pos_bias_u": (8, 64),
            "encoder.encoders.5.self_attn.pos_bias_v": (8, 64),
            "encoder.encoders.0.self_attn.linear_pos.weight": (512, 512),
            "encoder.encoders.0.self_attn.linear_q.bias": (512,),
            "encoder.encoders.0.feed_forward.w_1.weight": (2048, 512),
            "encoder.encoders.0.feed_forward.w_2.weight": (512, 2048),
            "encoder.encoders.0.norm_mha.weight": (512,),
            "encoder.up_layer.conv.weight": (512, 512, 5),
            "encoder.up_embed.out.0.weight": (512, 512),
            "encoder.up_encoders.3.norm_ff.bias": (512,),
            "encoder.after_norm.weight": (512,),
            "encoder_proj.weight": (80, 512),
            EST + "time_mlp.linear_1.weight": (1024, 320),
            EST + "time_mlp.linear_2.weight": (1024, 1024),
            EST + "down_blocks.0.0.mlp.1.weight": (256, 1024),
            EST + "down_blocks.0.0.block1.block.0.weight": (256, 320, 3),
            EST + "down_blocks.0.0.block1.block.2.weight": (256,),
            EST + "down_blocks.0.0.res_conv.weight": (256, 320, 1),
            EST + "down_blocks.0.1.3.attn1.to_q.weight": (512, 256),
            EST + "down_blocks.0.1.3.attn1.to_out.0.weight": (256, 512),
            EST + "down_blocks.0.1.0.ff.net.0.proj.weight": (1024, 256),
            EST + "down_blocks.0.1.0.ff.net.2.weight": (256, 1024),
            EST + "down_blocks.0.2.weight": (256, 256, 3),
            EST + "mid_blocks.11.0.block2.block.0.weight": (256, 256, 3),
            EST + "mid_blocks.11.1.3.norm3.weight": (256,),
            EST + "up_blocks.0.0.block1.block.0.weight": (256, 512, 3),
            EST + "up_blocks.0.0.res_conv.weight": (256, 512, 1),
            EST + "up_blocks.0.2.bias": (256,),
            EST + "final_block.block.0.weight": (256, 256, 3),
            EST + "final_proj.weight": (80, 256, 1),
        },
        absent=("encoder.encoders.0.self_attn.linear_pos.bias", EST + "down_blocks.0.1.0.attn1.to_q.bias",
                "encoder.encoders.6.norm_ff.weight", "encoder.up_encoders.4.norm_ff.weight",
                EST + "mid_blocks.12.0.res_conv.weight", EST + "down_blocks.0.1.4.norm1.weight"),
        longer_tokens=43, padding=(60, 51), zeroes_padded_frames=True),
}
by_release = pytest.mark.parametrize("version", sorted(RELEASES, reverse=True), ids=lambda v: f"CV{v}")


def case_of(version: int) -> FlowCase:
    return CASES[RELEASES[version].flow_kind]


def randomized(module: torch.nn.Module, seed: int = 0, std: float = 0.1,
               norm_gains_around_one: bool = False) -> torch.nn.Module:
    """Random values for every parameter (the RoPE buffer stays), so no weight is accidentally zero or trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            gain = norm_gains_around_one and "norm" in name and p.ndim == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if gain else 0.0))
    return module.eval()


@pytest.fixture(scope="module")
def tiny_flows() -> dict[str, torch.nn.Module]:
    """One randomized tiny flow per kind, keyed by FlowConfig.kind."""
    return {kind: randomized(case.module(case.tiny), norm_gains_around_one=case.norm_gains_around_one)
            for kind, case in CASES.items()}


@pytest.fixture(scope="module")
def dit_flow(tiny_flows) -> CausalFlow:
    return tiny_flows["dit"]


@pytest.fixture(scope="module")
def unet_flow(tiny_flows) -> ConformerUNetFlow:
    return tiny_flows["conformer_unet"]


def estimator_inputs(seq_len: int, seed: int = 4, pad: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, mu, cond = (torch.randn(2, 80, seq_len, generator=gen) for _ in range(3))
    mask = torch.ones(2, 1, seq_len)
    if pad:
        mask[1, :, -pad:] = 0
    return x, mask, mu, torch.tensor([0.2, 0.7]), torch.randn(2, 80, generator=gen), cond


def run_flow(flow, cfg: FlowConfig, n_tokens, streaming, finalize, seed=8):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, size=(1, 70))
    prompt_tokens = rng.integers(0, cfg.vocab_size, size=(1, 10))
    prompt_feat = rng.normal(size=(1, 20, 80)).astype(np.float32)
    embedding = rng.normal(size=(1, 192)).astype(np.float32)
    noise = flow_noise_buffer_torch().numpy()
    return token_to_mel(TorchFlow(flow), tokens[:, :n_tokens], prompt_tokens, prompt_feat, embedding, noise,
                        streaming=streaming, finalize=finalize, cfg=cfg)


# --------------------------------------------------------------------------- every release


@by_release
def test_state_dict_matches_official_flow_pt_layout(version):
    case, kind = case_of(version), RELEASES[version].flow_kind
    with torch.device("meta"):
        flow = FLOW_CLASSES[kind](FlowConfig(kind=kind))
    assert isinstance(flow, case.module)
    shapes = {k: tuple(v.shape) for k, v in flow.state_dict().items()}
    assert len(shapes) == case.keys
    assert sum(math.prod(s) for s in shapes.values()) == case.params
    for key, shape in case.shapes.items():
        assert shapes[key] == shape, key
    assert not set(case.absent) & set(shapes)


@by_release
def test_padding_does_not_leak_into_valid_frames(tiny_flows, version):
    case = case_of(version)
    flow = tiny_flows[case.tiny.kind]
    seq_len, valid = case.padding
    x, _, mu, t, spks, cond = estimator_inputs(seq_len, seed=5)
    mask = torch.ones(2, 1, seq_len)
    mask[..., valid:] = 0
    with torch.no_grad():
        for streaming in (False, True):
            padded = flow.estimator(x, mask, mu, t, spks, cond, streaming=streaming)
            exact = flow.estimator(x[..., :valid], mask[..., :valid], mu[..., :valid], t, spks, cond[..., :valid],
                                   streaming=streaming)
            torch.testing.assert_close(padded[..., :valid], exact, atol=1e-5, rtol=1e-5)
            if case.zeroes_padded_frames:
                assert not padded[..., valid:].any()


@by_release
def test_embed_speaker_normalizes_then_projects(tiny_flows, version):
    flow = tiny_flows[case_of(version).tiny.kind]
    embedding = np.random.default_rng(3).normal(size=(1, 192)) * 7
    with torch.no_grad():
        got = flow.embed_speaker(torch.from_numpy(embedding).float()).numpy()
    layer = flow.spk_embed_affine_layer
    unit = embedding / np.linalg.norm(embedding)
    want = unit @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@by_release
def test_streaming_prefix_matches_longer_streaming_run(tiny_flows, version):
    # 10 prompt + 18 tokens, 3 of them look-ahead: 25 tokens = one 50-frame chunk, 30 frames after the prompt.
    case = case_of(version)
    flow, longer_tokens = tiny_flows[case.tiny.kind], case.longer_tokens
    prefix = run_flow(flow, case.tiny, 18, streaming=True, finalize=False)
    longer = run_flow(flow, case.tiny, longer_tokens, streaming=True, finalize=False)
    assert prefix.shape == (1, 80, 30) and longer.shape == (1, 80, 2 * (longer_tokens + 10 - 3) - 20)
    np.testing.assert_allclose(prefix, longer[:, :, :30], atol=1e-5)
    # Without chunk masks the prefix sees less context than the longer run, so the frames differ.
    full_prefix = run_flow(flow, case.tiny, 18, streaming=False, finalize=False)
    full_longer = run_flow(flow, case.tiny, longer_tokens, streaming=False, finalize=False)
    assert np.abs(full_prefix - full_longer[:, :, :30]).max() > 1e-3


@by_release
def test_flow_is_deterministic(tiny_flows, version):
    case = case_of(version)
    flow = tiny_flows[case.tiny.kind]
    first = run_flow(flow, case.tiny, 40, streaming=False, finalize=True)
    second = run_flow(flow, case.tiny, 40, streaming=False, finalize=True)
    assert first.shape == (1, 80, 80) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    with torch.no_grad():
        inputs = estimator_inputs(37)
        assert torch.equal(flow.estimator(*inputs, streaming=True), flow.estimator(*inputs, streaming=True))


# --------------------------------------------------------------------------- solver (any flow)


def test_noise_buffer_is_the_seed_zero_draw():
    buffer = flow_noise_buffer_torch()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = torch.randn(1, 80, 15000)
    assert buffer.dtype == torch.float32 and torch.equal(buffer, reference)
    np.testing.assert_allclose(buffer[0, 0, :5].numpy(), [-1.1258, -1.1524, -0.2506, -0.4339, 0.8487], atol=1e-4)


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
                       cfg=TINY_DIT)
    # Zero velocity: the output is the noise itself, (2 + 5 - 3) tokens * 2 frames minus 4 prompt frames.
    np.testing.assert_array_equal(mel, noise[:, :, 4:8])
    call = stage.calls[0]
    np.testing.assert_array_equal(call["mu"][0, 0], [7, 7, 8, 8, 1, 1, 2, 2])
    np.testing.assert_array_equal(call["cond"][0, :, :4], prompt_feat[0].T)
    assert not call["cond"][0, :, 4:].any()
    np.testing.assert_array_equal(call["spks"][0], embedding[0, :80] * 2)
    with pytest.raises(InputError, match="noise"):
        token_to_mel(stage, np.ones((1, 20), np.int64), prompt_tokens, prompt_feat, embedding, noise,
                     streaming=False, finalize=True, cfg=TINY_DIT)


# --------------------------------------------------------------------------- CV3: DiT pieces


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
    dit = DiT(TINY_DIT)
    rot_dim = TINY_DIT.dit_dim_head
    inv_freq = 10000.0 ** (-np.arange(0, rot_dim, 2) / rot_dim)
    np.testing.assert_allclose(dit.rotary_embed.inv_freq.numpy(), inv_freq, rtol=1e-6)
    x = torch.randn(2, 30, TINY_DIT.dit_heads * TINY_DIT.dit_dim_head)
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
    heads, dh = TINY_DIT.dit_heads, TINY_DIT.dit_dim_head
    x, mu, cond, spks, t = (a.double() for a in (x, mu, cond, spks, t))
    batch, _, seq_len = x.shape
    freqs = torch.exp(-torch.arange(128, dtype=torch.float64) * math.log(10000) / 127)
    args = 1000 * t[:, None] * freqs[None]
    temb = lin(silu(lin(torch.cat([args.sin(), args.cos()], 1), "time_embed.time_mlp.0")), "time_embed.time_mlp.2")
    h = lin(torch.cat([x, cond, mu, spks[:, :, None].expand(-1, -1, seq_len)], 1).transpose(1, 2), "input_embed.proj")
    conv = h.transpose(1, 2)
    for name in ("conv1", "conv2"):
        conv = F.conv1d(F.pad(conv, (TINY_DIT.conv_pos_kernel - 1, 0)), d[f"input_embed.conv_pos_embed.{name}.0.weight"],
                        d[f"input_embed.conv_pos_embed.{name}.0.bias"], groups=TINY_DIT.conv_pos_groups)
        conv = conv * torch.tanh(F.softplus(conv))
    h = h + conv.transpose(1, 2)
    valid = mask[:, 0].bool()
    for blk in range(TINY_DIT.dit_depth):
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
def test_dit_matches_naive_reference(dit_flow, streaming):
    cfg = FlowConfig(**{**TINY_DIT.__dict__, "static_chunk_size": 6})
    dit = DiT(cfg)
    dit.load_state_dict(dit_flow.estimator.state_dict())
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


# --------------------------------------------------------------------------- CV3: token encoder


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
def test_encode_tokens_against_naive(dit_flow, finalize):
    tokens = np.array([[5, -1, 17, 3, 49, 0, 8, 8, 21]])
    with torch.no_grad():
        mu = dit_flow.encode_tokens(torch.from_numpy(tokens), finalize).numpy()
    table = dit_flow.input_embedding.weight.detach().double().numpy()
    emb = table[np.clip(tokens[0], 0, None)]
    if finalize:
        emb = np.concatenate([emb, np.zeros((3, emb.shape[1]))])
    want = naive_pre_lookahead(emb, dit_flow, 3)
    n_tokens = tokens.shape[1] - (0 if finalize else 3)
    assert mu.shape == (1, 80, 2 * n_tokens)
    np.testing.assert_allclose(mu[0, :, 0::2].T, want, atol=1e-5)
    np.testing.assert_array_equal(mu[..., 0::2], mu[..., 1::2])


# --------------------------------------------------------------------------- CV2: yaml


CV2_FLOW_YAML = """
chunk_size: 25
token_mel_ratio: 2
flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: 512
    output_size: 80
    spk_embed_dim: 192
    vocab_size: 6561
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: 512
        attention_heads: 8
        linear_units: 2048
        num_blocks: 6
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 512
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        cfm_params: !new:omegaconf.DictConfig
            content:
                t_scheduler: 'cosine'
                inference_cfg_rate: 0.7
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [256]
            attention_head_dim: 64
            n_blocks: 4
            num_mid_blocks: 12
            num_heads: 8
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
"""


def read_flow_section(tmp_path, text: str) -> dict:
    path = tmp_path / "cosyvoice2.yaml"
    path.write_text(text, encoding="utf-8")
    return read_hyperparams(path)["flow"]


def test_yaml_flow_section_gives_the_real_config(tmp_path):
    cfg = FlowConfig()
    apply_flow_v2_hyperparams(cfg, read_flow_section(tmp_path, CV2_FLOW_YAML))
    assert cfg == FlowConfig(kind="conformer_unet")
    changed = CV2_FLOW_YAML
    for old, new in (("num_blocks: 6", "num_blocks: 3"), ("channels: [256]", "channels: [128]"),
                     ("chunk_size: 25", "chunk_size: 10"), ("inference_cfg_rate: 0.7", "inference_cfg_rate: 0.5")):
        changed = changed.replace(old, new)
    cfg = FlowConfig()
    apply_flow_v2_hyperparams(cfg, read_flow_section(tmp_path, changed))
    assert (cfg.encoder_num_blocks, cfg.unet_channels, cfg.encoder_chunk_size, cfg.static_chunk_size,
            cfg.inference_cfg_rate) == (3, 128, 10, 20, 0.5)


@pytest.mark.parametrize("old,new,named", [
    ("macaron_style: False", "macaron_style: True", "macaron_style"),
    ("        use_cnn_module: False\n", "", "use_cnn_module"),   # left out: the official default adds a conv module
    ("channels: [256]", "channels: [256, 256]", "channels"),
    ("act_fn: 'gelu'", "act_fn: 'snake'", "act_fn"),
    ("            act_fn: 'gelu'\n", "", "act_fn"),       # left out: the official default is snake
    ("    input_size: 512\n    output_size", "    input_size: 256\n    output_size", "input_size"),
    ("token_mel_ratio: 2", "token_mel_ratio: 3", "token_mel_ratio"),
])
def test_yaml_with_an_unsupported_architecture_is_refused(tmp_path, old, new, named):
    assert old in CV2_FLOW_YAML
    with pytest.raises(ModelFolderError, match=named):
        apply_flow_v2_hyperparams(FlowConfig(), read_flow_section(tmp_path, CV2_FLOW_YAML.replace(old, new, 1)))


# --------------------------------------------------------------------------- CV2: relative positions, masks


def test_relative_position_encoding_closed_form():
    seq_len, dim = 7, 16
    got = relative_position_encoding(seq_len, dim, torch.zeros(1)).double().numpy()
    assert got.shape == (1, 2 * seq_len - 1, dim)
    for row in range(2 * seq_len - 1):
        r = seq_len - 1 - row                            # rows run from +(T-1) down to -(T-1)
        for i in range(dim // 2):
            w = 10000.0 ** (-2 * i / dim)
            np.testing.assert_allclose(got[0, row, 2 * i:2 * i + 2], [math.sin(r * w), math.cos(r * w)], atol=1e-6)


def test_rel_shift_picks_relative_position_i_minus_j():
    seq_len = 6
    x = torch.randn(2, 3, seq_len, 2 * seq_len - 1)
    got = rel_shift(x)
    assert got.shape == (2, 3, seq_len, seq_len)
    for i in range(seq_len):
        for j in range(seq_len):
            # Column k of x holds relative position T-1-k, so position i-j is column T-1-i+j.
            assert torch.equal(got[..., i, j], x[..., i, seq_len - 1 - i + j])


def naive_rel_attention(state: dict, x: torch.Tensor, heads: int, visible) -> torch.Tensor:
    """Float64 relative-position attention (Transformer-XL terms a+c and b+d), one query and head at a time.

    `visible(i, j)` says whether query i may attend key j. Positions are looked up as p[i - j] directly.
    """
    d = {k: v.double() for k, v in state.items()}
    x = x.double()
    seq_len, dim = x.shape[1], x.shape[2]
    dk = dim // heads
    lin = lambda h, n: h @ d[n + ".weight"].T + (d[n + ".bias"] if n + ".bias" in d else 0)  # noqa: E731
    q, k, v = lin(x, "linear_q")[0], lin(x, "linear_k")[0], lin(x, "linear_v")[0]
    rel = torch.arange(seq_len - 1, -seq_len, -1, dtype=torch.float64)
    w = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    pe = torch.stack([(rel[:, None] * w).sin(), (rel[:, None] * w).cos()], -1).flatten(1)
    p = {int(r): row for r, row in zip(rel, lin(pe, "linear_pos"))}
    out = torch.zeros(seq_len, dim, dtype=torch.float64)
    for i in range(seq_len):
        keys = [j for j in range(seq_len) if visible(i, j)]
        for h in range(heads):
            s = slice(h * dk, (h + 1) * dk)
            content = [(q[i, s] + d["pos_bias_u"][h]) @ k[j, s] for j in keys]
            position = [(q[i, s] + d["pos_bias_v"][h]) @ p[i - j][s] for j in keys]
            scores = (torch.stack(content) + torch.stack(position)) / math.sqrt(dk)
            weights = torch.softmax(scores, 0)
            out[i, s] = sum(wt * v[j, s] for wt, j in zip(weights, keys))
    return lin(out, "linear_out")[None]


@pytest.mark.parametrize("chunk", [0, 4])
def test_rel_position_attention_matches_naive(unet_flow, chunk):
    attn = unet_flow.encoder.encoders[0].self_attn
    seq_len = 11
    x = torch.randn(1, seq_len, TINY_UNET.encoder_dim, generator=torch.Generator().manual_seed(1))
    pos = relative_position_encoding(seq_len, TINY_UNET.encoder_dim, x)
    with torch.no_grad():
        got = attn(x, pos, attention_mask(torch.ones(1, seq_len, dtype=torch.bool), chunk))
    want = naive_rel_attention(attn.state_dict(), x, TINY_UNET.encoder_heads,
                               lambda i, j: chunk == 0 or j < (i // chunk + 1) * chunk)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def test_streaming_switch_as_flag_or_tensor():
    valid = torch.ones(1, 13, dtype=torch.bool)
    valid[0, 11:] = False
    on, off = torch.tensor([True]), torch.tensor([False])
    assert torch.equal(streaming_attention_mask(valid, 5, True), attention_mask(valid, 5))
    assert torch.equal(streaming_attention_mask(valid, 5, on), attention_mask(valid, 5))
    assert torch.equal(streaming_attention_mask(valid, 5, False), attention_mask(valid, 0))
    assert torch.equal(streaming_attention_mask(valid, 5, off), attention_mask(valid, 0))
    # A chunk size of 0 (the yaml's default) never chunks.
    assert torch.equal(streaming_attention_mask(valid, 0, on), attention_mask(valid, 0))
    assert not torch.equal(attention_mask(valid, 5), attention_mask(valid, 0))


# --------------------------------------------------------------------------- CV2: conformer encoder


def naive_encoder(flow: ConformerUNetFlow, tokens: np.ndarray, finalize: bool, streaming: bool) -> torch.Tensor:
    """Float64 reference of CausalMaskedDiffWithXvec's token encoding, written from the spec."""
    cfg = flow.cfg
    d = {k: v.double() for k, v in flow.state_dict().items()}
    lin = lambda h, n: h @ d[n + ".weight"].T + d[n + ".bias"]  # noqa: E731
    ln = lambda h, n, eps: F.layer_norm(h, (h.shape[-1],), d[n + ".weight"], d[n + ".bias"], eps)  # noqa: E731
    embed = lambda h, n: ln(lin(h, n + ".out.0"), n + ".out.1", 1e-5) * math.sqrt(cfg.encoder_dim)  # noqa: E731
    emb = d["input_embedding.weight"][torch.from_numpy(np.clip(tokens[0], 0, None))][None]
    n = emb.shape[1] - (0 if finalize else 3)
    h = embed(emb, "encoder.embed")                      # the look-ahead tokens get the same embedding
    look = torch.cat([h[:, n:], torch.zeros(1, 3, cfg.encoder_dim, dtype=torch.float64)], 1)[:, :3]
    x = torch.cat([h[:, :n], look], 1).transpose(1, 2)
    pll = "encoder.pre_lookahead_layer."
    y = F.leaky_relu(F.conv1d(x, d[pll + "conv1.weight"], d[pll + "conv1.bias"]), 0.01)
    y = F.conv1d(F.pad(y, (2, 0)), d[pll + "conv2.weight"], d[pll + "conv2.bias"])
    h = y.transpose(1, 2) + h[:, :n]

    def layers(h, prefix, count, chunk):
        for i in range(count):
            p = f"{prefix}.{i}."
            attn = p + "self_attn."
            state = {k[len(attn):]: v for k, v in flow.state_dict().items() if k.startswith(attn)}
            visible = (lambda a, b: b < (a // chunk + 1) * chunk) if streaming else (lambda a, b: True)
            h = h + naive_rel_attention(state, ln(h, p + "norm_mha", 1e-12), cfg.encoder_heads, visible)
            f = lin(ln(h, p + "norm_ff", 1e-12), p + "feed_forward.w_1")
            h = h + lin(f * torch.sigmoid(f), p + "feed_forward.w_2")
        return h

    h = layers(h, "encoder.encoders", cfg.encoder_num_blocks, 25)
    up = torch.repeat_interleave(h.transpose(1, 2), 2, dim=2)
    up = F.conv1d(F.pad(up, (4, 0)), d["encoder.up_layer.conv.weight"], d["encoder.up_layer.conv.bias"])
    h = layers(embed(up.transpose(1, 2), "encoder.up_embed"), "encoder.up_encoders", cfg.encoder_num_up_blocks, 50)
    return lin(ln(h, "encoder.after_norm", 1e-5), "encoder_proj").transpose(1, 2)


@pytest.mark.parametrize("finalize,streaming", [(True, False), (False, False), (False, True)])
def test_encoder_matches_naive(unet_flow, finalize, streaming):
    # 29 tokens: past one 25-token chunk before the upsampling and one 50-frame chunk after it.
    tokens = np.random.default_rng(2).integers(-1, TINY_UNET.vocab_size, (1, 29))
    with torch.no_grad():
        got = unet_flow.encode_tokens(torch.from_numpy(tokens), finalize, streaming)
    want = naive_encoder(unet_flow, tokens, finalize, streaming)
    assert got.shape == (1, 80, 2 * (29 - (0 if finalize else 3)))
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)


def test_encoder_chunks_hide_later_tokens(unet_flow):
    # Streaming, frames of tokens < 50 (two 25-token chunks) see tokens < 50 plus the look-ahead of 3 only.
    tokens = torch.from_numpy(np.random.default_rng(3).integers(0, TINY_UNET.vocab_size, (1, 70)))
    changed = tokens.clone()
    changed[:, 53:] = (changed[:, 53:] + 1) % TINY_UNET.vocab_size
    with torch.no_grad():
        for streaming in (True, False):
            a, b = (unet_flow.encode_tokens(t, True, streaming) for t in (tokens, changed))
            if streaming:
                assert torch.equal(a[..., :100], b[..., :100])
            else:
                assert (a[..., :100] - b[..., :100]).abs().max() > 1e-4
            assert (a[..., 106:] - b[..., 106:]).abs().max() > 1e-4


# --------------------------------------------------------------------------- CV2: UNet estimator


def naive_unet(unet, x, mask, mu, t, spks, cond, chunk: int) -> torch.Tensor:
    """Float64 reference of CausalConditionalDecoder (one level), written from the spec."""
    d = {k: v.double() for k, v in unet.state_dict().items()}
    x, mask, mu, t, spks, cond = (a.double() for a in (x, mask, mu, t, spks, cond))
    lin = lambda h, n: h @ d[n + ".weight"].T + (d[n + ".bias"] if n + ".bias" in d else 0)  # noqa: E731
    mish = lambda h: h * torch.tanh(F.softplus(h))  # noqa: E731
    conv = lambda h, n, pad: F.conv1d(F.pad(h, (pad, 0)), d[n + ".weight"], d[n + ".bias"])  # noqa: E731
    ln = lambda h, n: F.layer_norm(h, (h.shape[-1],), d[n + ".weight"], d[n + ".bias"], 1e-5)  # noqa: E731
    heads, dh = TINY_UNET.unet_heads, TINY_UNET.unet_head_dim
    batch, _, seq_len = x.shape
    half = 4 * 80 // 2
    args = 1000 * t[:, None] * torch.exp(-torch.arange(half, dtype=torch.float64) * math.log(10000) / (half - 1))
    temb = lin(F.silu(lin(torch.cat([args.sin(), args.cos()], 1), "time_mlp.linear_1")), "time_mlp.linear_2")

    def block(h, n):                                     # causal conv k=3, LayerNorm over channels, Mish, masked
        h = conv(h * mask, n + ".block.0", 2)
        return mish(ln(h.transpose(1, 2), n + ".block.2").transpose(1, 2)) * mask

    def resnet(h, n):
        out = block(h, n + ".block1") + lin(mish(temb), n + ".mlp.1")[:, :, None]
        return block(out, n + ".block2") + conv(h * mask, n + ".res_conv", 0)

    def transformer(h, n):
        h = h.transpose(1, 2)
        for blk in range(TINY_UNET.unet_n_blocks):
            p = f"{n}.{blk}."
            a = ln(h, p + "norm1")
            q, k, v = (lin(a, p + f"attn1.to_{c}") for c in "qkv")
            out = torch.zeros_like(q)
            for b in range(batch):
                for i in range(seq_len):
                    keys = [j for j in range(seq_len) if mask[b, 0, j] and (chunk == 0 or j < (i // chunk + 1) * chunk)]
                    for hd in range(heads):
                        s = slice(hd * dh, (hd + 1) * dh)
                        w = torch.softmax(torch.stack([q[b, i, s] @ k[b, j, s] for j in keys]) / math.sqrt(dh), 0)
                        out[b, i, s] = sum(wj * v[b, j, s] for wj, j in zip(w, keys))
            h = h + lin(out, p + "attn1.to_out.0")
            f = lin(ln(h, p + "norm3"), p + "ff.net.0.proj")
            h = h + lin(0.5 * f * (1 + torch.erf(f / math.sqrt(2))), p + "ff.net.2")
        return h.transpose(1, 2)

    h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, seq_len), cond], 1)
    skip = transformer(resnet(h, "down_blocks.0.0"), "down_blocks.0.1")
    h = conv(skip * mask, "down_blocks.0.2", 2)
    for m in range(TINY_UNET.unet_num_mid_blocks):
        h = transformer(resnet(h, f"mid_blocks.{m}.0"), f"mid_blocks.{m}.1")
    h = transformer(resnet(torch.cat([h, skip], 1), "up_blocks.0.0"), "up_blocks.0.1")
    h = block(conv(h * mask, "up_blocks.0.2", 2), "final_block")
    return conv(h * mask, "final_proj", 0) * mask


@pytest.mark.parametrize("streaming", [False, True])
def test_unet_matches_naive(unet_flow, streaming):
    cfg = FlowConfig(**{**TINY_UNET.__dict__, "static_chunk_size": 6})
    unet = ConformerUNetFlow(cfg).estimator
    unet.load_state_dict(unet_flow.estimator.state_dict())
    inputs = estimator_inputs(15, pad=4)
    with torch.no_grad():
        got = unet(*inputs, streaming=streaming)
    want = naive_unet(unet, *inputs, chunk=6 if streaming else 0)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)

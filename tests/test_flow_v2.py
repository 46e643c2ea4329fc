"""Tests for the CosyVoice2 flow: relative-position conformer encoder, UNet estimator, yaml reading, token-to-mel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosyvoice_onnx.config import FlowConfig
from cosyvoice_onnx.config_readers import apply_flow_v2_hyperparams
from cosyvoice_onnx.errors import ModelFolderError
from cosyvoice_onnx.flow_solver import token_to_mel
from cosyvoice_onnx.hyperparams import read_hyperparams
from cosyvoice_onnx.torch_backend.conformer import rel_shift, relative_position_encoding
from cosyvoice_onnx.torch_backend.flow import (
    TorchFlow, attention_mask, flow_noise_buffer_torch, streaming_attention_mask,
)
from cosyvoice_onnx.torch_backend.flow_v2 import ConformerUNetFlow
from cosyvoice_onnx.torch_backend.loader import FLOW_CLASSES

# Real chunk sizes (25 tokens, 50 frames), tiny widths.
TINY = FlowConfig(kind="conformer_unet", vocab_size=50, encoder_dim=32, encoder_heads=4, encoder_linear_units=48,
                  encoder_num_blocks=2, encoder_num_up_blocks=1, unet_channels=32, unet_n_blocks=2,
                  unet_num_mid_blocks=2, unet_heads=2, unet_head_dim=16)


def randomized(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Random values for every parameter (LayerNorm gains around 1), so no weight is accidentally trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if "norm" in name and p.ndim == 1
                                                                   and name.endswith("weight") else 0.0))
    return module.eval()


@pytest.fixture(scope="module")
def tiny_flow() -> ConformerUNetFlow:
    return randomized(ConformerUNetFlow(TINY))


# --------------------------------------------------------------------------- layout and yaml


def test_state_dict_matches_official_cv2_flow_pt_layout():
    with torch.device("meta"):
        flow = FLOW_CLASSES["conformer_unet"](FlowConfig(kind="conformer_unet"))
    assert isinstance(flow, ConformerUNetFlow)
    shapes = {k: tuple(v.shape) for k, v in flow.state_dict().items()}
    assert len(shapes) == 1121
    assert sum(math.prod(s) for s in shapes.values()) == 112_549_360
    est = "decoder.estimator."
    expected = {
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
        est + "time_mlp.linear_1.weight": (1024, 320),
        est + "time_mlp.linear_2.weight": (1024, 1024),
        est + "down_blocks.0.0.mlp.1.weight": (256, 1024),
        est + "down_blocks.0.0.block1.block.0.weight": (256, 320, 3),
        est + "down_blocks.0.0.block1.block.2.weight": (256,),
        est + "down_blocks.0.0.res_conv.weight": (256, 320, 1),
        est + "down_blocks.0.1.3.attn1.to_q.weight": (512, 256),
        est + "down_blocks.0.1.3.attn1.to_out.0.weight": (256, 512),
        est + "down_blocks.0.1.0.ff.net.0.proj.weight": (1024, 256),
        est + "down_blocks.0.1.0.ff.net.2.weight": (256, 1024),
        est + "down_blocks.0.2.weight": (256, 256, 3),
        est + "mid_blocks.11.0.block2.block.0.weight": (256, 256, 3),
        est + "mid_blocks.11.1.3.norm3.weight": (256,),
        est + "up_blocks.0.0.block1.block.0.weight": (256, 512, 3),
        est + "up_blocks.0.0.res_conv.weight": (256, 512, 1),
        est + "up_blocks.0.2.bias": (256,),
        est + "final_block.block.0.weight": (256, 256, 3),
        est + "final_proj.weight": (80, 256, 1),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    absent = ["encoder.encoders.0.self_attn.linear_pos.bias", est + "down_blocks.0.1.0.attn1.to_q.bias",
              "encoder.encoders.6.norm_ff.weight", "encoder.up_encoders.4.norm_ff.weight",
              est + "mid_blocks.12.0.res_conv.weight", est + "down_blocks.0.1.4.norm1.weight"]
    assert not set(absent) & set(shapes)


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


# --------------------------------------------------------------------------- relative positions, masks


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
def test_rel_position_attention_matches_naive(tiny_flow, chunk):
    attn = tiny_flow.encoder.encoders[0].self_attn
    seq_len = 11
    x = torch.randn(1, seq_len, TINY.encoder_dim, generator=torch.Generator().manual_seed(1))
    pos = relative_position_encoding(seq_len, TINY.encoder_dim, x)
    with torch.no_grad():
        got = attn(x, pos, attention_mask(torch.ones(1, seq_len, dtype=torch.bool), chunk))
    want = naive_rel_attention(attn.state_dict(), x, TINY.encoder_heads,
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


# --------------------------------------------------------------------------- encoder


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
def test_encoder_matches_naive(tiny_flow, finalize, streaming):
    # 29 tokens: past one 25-token chunk before the upsampling and one 50-frame chunk after it.
    tokens = np.random.default_rng(2).integers(-1, TINY.vocab_size, (1, 29))
    with torch.no_grad():
        got = tiny_flow.encode_tokens(torch.from_numpy(tokens), finalize, streaming)
    want = naive_encoder(tiny_flow, tokens, finalize, streaming)
    assert got.shape == (1, 80, 2 * (29 - (0 if finalize else 3)))
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)


def test_encoder_chunks_hide_later_tokens(tiny_flow):
    # Streaming, frames of tokens < 50 (two 25-token chunks) see tokens < 50 plus the look-ahead of 3 only.
    tokens = torch.from_numpy(np.random.default_rng(3).integers(0, TINY.vocab_size, (1, 70)))
    changed = tokens.clone()
    changed[:, 53:] = (changed[:, 53:] + 1) % TINY.vocab_size
    with torch.no_grad():
        for streaming in (True, False):
            a, b = (tiny_flow.encode_tokens(t, True, streaming) for t in (tokens, changed))
            if streaming:
                assert torch.equal(a[..., :100], b[..., :100])
            else:
                assert (a[..., :100] - b[..., :100]).abs().max() > 1e-4
            assert (a[..., 106:] - b[..., 106:]).abs().max() > 1e-4


# --------------------------------------------------------------------------- UNet estimator


def naive_unet(unet, x, mask, mu, t, spks, cond, chunk: int) -> torch.Tensor:
    """Float64 reference of CausalConditionalDecoder (one level), written from the spec."""
    d = {k: v.double() for k, v in unet.state_dict().items()}
    x, mask, mu, t, spks, cond = (a.double() for a in (x, mask, mu, t, spks, cond))
    lin = lambda h, n: h @ d[n + ".weight"].T + (d[n + ".bias"] if n + ".bias" in d else 0)  # noqa: E731
    mish = lambda h: h * torch.tanh(F.softplus(h))  # noqa: E731
    conv = lambda h, n, pad: F.conv1d(F.pad(h, (pad, 0)), d[n + ".weight"], d[n + ".bias"])  # noqa: E731
    ln = lambda h, n: F.layer_norm(h, (h.shape[-1],), d[n + ".weight"], d[n + ".bias"], 1e-5)  # noqa: E731
    heads, dh = TINY.unet_heads, TINY.unet_head_dim
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
        for blk in range(TINY.unet_n_blocks):
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
    for m in range(TINY.unet_num_mid_blocks):
        h = transformer(resnet(h, f"mid_blocks.{m}.0"), f"mid_blocks.{m}.1")
    h = transformer(resnet(torch.cat([h, skip], 1), "up_blocks.0.0"), "up_blocks.0.1")
    h = block(conv(h * mask, "up_blocks.0.2", 2), "final_block")
    return conv(h * mask, "final_proj", 0) * mask


def estimator_inputs(seq_len: int, seed: int = 4, pad: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, mu, cond = (torch.randn(2, 80, seq_len, generator=gen) for _ in range(3))
    mask = torch.ones(2, 1, seq_len)
    if pad:
        mask[1, :, -pad:] = 0
    return x, mask, mu, torch.tensor([0.2, 0.7]), torch.randn(2, 80, generator=gen), cond


@pytest.mark.parametrize("streaming", [False, True])
def test_unet_matches_naive(tiny_flow, streaming):
    cfg = FlowConfig(**{**TINY.__dict__, "static_chunk_size": 6})
    unet = ConformerUNetFlow(cfg).estimator
    unet.load_state_dict(tiny_flow.estimator.state_dict())
    inputs = estimator_inputs(15, pad=4)
    with torch.no_grad():
        got = unet(*inputs, streaming=streaming)
    want = naive_unet(unet, *inputs, chunk=6 if streaming else 0)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)


def test_unet_padding_does_not_leak_into_valid_frames(tiny_flow):
    x, _, mu, t, spks, cond = estimator_inputs(60, seed=5)
    mask = torch.ones(2, 1, 60)
    mask[..., 51:] = 0
    with torch.no_grad():
        for streaming in (False, True):
            padded = tiny_flow.estimator(x, mask, mu, t, spks, cond, streaming=streaming)
            exact = tiny_flow.estimator(x[..., :51], mask[..., :51], mu[..., :51], t, spks, cond[..., :51],
                                        streaming=streaming)
            torch.testing.assert_close(padded[..., :51], exact, atol=1e-5, rtol=1e-5)
            assert not padded[..., 51:].any()


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
    # 10 prompt + 18 tokens, 3 of them look-ahead: 25 tokens = one encoder chunk = one 50-frame UNet chunk.
    prefix = run_flow(tiny_flow, 18, streaming=True, finalize=False)
    longer = run_flow(tiny_flow, 43, streaming=True, finalize=False)
    assert prefix.shape == (1, 80, 30) and longer.shape == (1, 80, 80)
    np.testing.assert_allclose(prefix, longer[:, :, :30], atol=1e-5)
    # Without chunk masks the prefix sees less context than the longer run, so the frames differ.
    full_prefix = run_flow(tiny_flow, 18, streaming=False, finalize=False)
    full_longer = run_flow(tiny_flow, 43, streaming=False, finalize=False)
    assert np.abs(full_prefix - full_longer[:, :, :30]).max() > 1e-3


def test_flow_is_deterministic(tiny_flow):
    first = run_flow(tiny_flow, 40, streaming=False, finalize=True)
    second = run_flow(tiny_flow, 40, streaming=False, finalize=True)
    assert first.shape == (1, 80, 80) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    with torch.no_grad():
        inputs = estimator_inputs(37)
        assert torch.equal(tiny_flow.estimator(*inputs, streaming=True), tiny_flow.estimator(*inputs, streaming=True))

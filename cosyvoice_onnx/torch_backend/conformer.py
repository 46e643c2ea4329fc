"""CosyVoice2's token encoder: relative-position conformer layers around a x2 upsampling, with pre-lookahead."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FlowConfig
from .flow import PreLookaheadLayer, streaming_attention_mask

EMBED_NORM_EPS = 1e-5
LAYER_NORM_EPS = 1e-12                     # the conformer layers' own LayerNorms
POSITION_BASE = 10000.0


def relative_position_encoding(seq_len: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """[1, 2T-1, dim] sinusoids for the relative positions T-1, ..., 0, ..., -(T-1) in that order (ESPnet's layout):
    channel 2i holds sin(r * w_i), channel 2i+1 cos(r * w_i), w_i = 10000^(-2i/dim), computed in float32."""
    positions = torch.arange(seq_len - 1, -seq_len, -1, device=like.device).float()
    freqs = torch.exp(torch.arange(0, dim, 2, device=like.device).float() * -(math.log(POSITION_BASE) / dim))
    angles = positions.unsqueeze(1) * freqs.unsqueeze(0)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1).unsqueeze(0).to(like.dtype)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """[..., T, 2T-1] scores against relative positions T-1 ... -(T-1) -> [..., T, T] with out[i, j] at position i - j.

    Transformer-XL's shift: one zero column on the left, then reading the buffer with a row length one shorter
    moves row i left by T-1-i; it is a reshape, not a gather, so it stays cheap and exportable.
    """
    *lead, seq_len, n_pos = scores.shape
    padded = F.pad(scores, (1, 0)).reshape(*lead, n_pos + 1, seq_len)
    return padded[..., 1:, :].reshape(*lead, seq_len, n_pos)[..., :seq_len]


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (content bias u, position bias v)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.head_dim))

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, D]; pos_emb [1, 2T-1, D]; mask [B, 1, T, T] bool (True = visible) -> [B, T, D]."""
        batch = x.shape[0]

        def split_heads(h: torch.Tensor) -> torch.Tensor:
            return h.view(h.shape[0], -1, self.heads, self.head_dim)

        q = split_heads(self.linear_q(x))
        k = split_heads(self.linear_k(x)).transpose(1, 2)
        v = split_heads(self.linear_v(x)).transpose(1, 2)
        p = split_heads(self.linear_pos(pos_emb)).transpose(1, 2)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
        scores = (content + position) / math.sqrt(self.head_dim)
        # Every row keeps at least one visible key (attention_mask opens empty rows), so the masked weights come
        # out of the softmax as exact zeros and need no second masking.
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, -1, self.heads * self.head_dim)
        return self.linear_out(out)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm layer without macaron feed-forward or convolution module: attention, then feed-forward."""

    def __init__(self, dim: int, heads: int, linear_units: int):
        super().__init__()
        self.self_attn = RelPositionAttention(dim, heads)
        self.feed_forward = PositionwiseFeedForward(dim, linear_units)
        self.norm_ff = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm_mha = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos_emb, mask)
        return x + self.feed_forward(self.norm_ff(x))


class LinearEmbedding(nn.Module):
    """Linear, LayerNorm, then the x sqrt(dim) scale of the positional-encoding stage (which adds nothing else)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = math.sqrt(dim)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim, eps=EMBED_NORM_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.scale


class Upsample1D(nn.Module):
    """Nearest-neighbour upsampling by `stride` along time, then a causal conv of kernel 2*stride+1."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, 2 * stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, stride * T, C]."""
        # repeat_interleave is nearest interpolation by an integer factor, value for value.
        h = x.transpose(1, 2).repeat_interleave(self.stride, dim=2)
        h = self.conv(F.pad(h, (2 * self.stride, 0)))
        # Contiguous, so the next Linear takes the same GEMM path as the checkpoint's code: bit-equal output.
        return h.transpose(1, 2).contiguous()


class UpsampleConformerEncoder(nn.Module):
    """Token embeddings [1, N, D] -> [1, ratio * N, D]: embed, pre-lookahead, conformer layers over tokens,
    upsample, embed again, conformer layers over mel frames, final LayerNorm."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        dim = cfg.encoder_dim
        self.lookahead = cfg.pre_lookahead_len
        self.stride = cfg.token_mel_ratio
        self.chunk_size = cfg.encoder_chunk_size
        # Registration order follows flow.pt, so state_dict() lists the keys as the checkpoint does.
        self.embed = LinearEmbedding(dim)
        self.after_norm = nn.LayerNorm(dim, eps=EMBED_NORM_EPS)
        self.pre_lookahead_layer = PreLookaheadLayer(dim, dim, cfg.pre_lookahead_len)
        self.encoders = nn.ModuleList(
            ConformerLayer(dim, cfg.encoder_heads, cfg.encoder_linear_units) for _ in range(cfg.encoder_num_blocks))
        self.up_layer = Upsample1D(dim, self.stride)
        self.up_embed = LinearEmbedding(dim)
        self.up_encoders = nn.ModuleList(
            ConformerLayer(dim, cfg.encoder_heads, cfg.encoder_linear_units) for _ in range(cfg.encoder_num_up_blocks))

    def forward(self, xs: torch.Tensor, context: torch.Tensor, streaming: bool | torch.Tensor) -> torch.Tensor:
        """xs [1, N, D] embeddings to encode; context [1, K, D], K <= lookahead, those of the tokens after them
        (K = 0 when finalized: zeros stand in for missing look-ahead). `streaming` selects chunked attention."""
        xs = self.embed(xs)
        padding = xs.new_zeros((xs.shape[0], self.lookahead, xs.shape[2]))
        context = torch.cat((self.embed(context), padding), dim=1)[:, : self.lookahead]
        xs = self.pre_lookahead_layer(xs, context=context)
        xs = self._run_layers(self.encoders, xs, self.chunk_size, streaming)
        xs = self.up_embed(self.up_layer(xs))
        xs = self._run_layers(self.up_encoders, xs, self.chunk_size * self.stride, streaming)
        return self.after_norm(xs)

    @staticmethod
    def _run_layers(layers: nn.ModuleList, xs: torch.Tensor, chunk_size: int, streaming) -> torch.Tensor:
        pos_emb = relative_position_encoding(xs.shape[1], xs.shape[2], xs)
        mask = streaming_attention_mask(torch.ones_like(xs[..., 0], dtype=torch.bool), chunk_size, streaming)
        for layer in layers:
            xs = layer(xs, pos_emb, mask)
        return xs

"""CosyVoice2's CFM velocity estimator: a one-level causal 1-D UNet with transformer blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FlowConfig
from .flow import sinusoidal_time_features, streaming_attention_mask

FF_MULT = 4                                # the transformer blocks' feed-forward width, x dim


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only, so frame t sees frames <= t."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class SwapTimeChannels(nn.Module):
    """[B, C, T] <-> [B, T, C], so a LayerNorm inside a Sequential normalises over channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class CausalBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.block = nn.Sequential(CausalConv1d(dim, dim_out, 3), SwapTimeChannels(), nn.LayerNorm(dim_out),
                                   SwapTimeChannels(), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class CausalResnetBlock1D(nn.Module):
    """Two causal blocks with the time embedding added between them, plus a 1x1 residual projection."""

    def __init__(self, dim: int, dim_out: int, time_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(temb).unsqueeze(-1)
        return self.block2(h, mask) + self.res_conv(x * mask)


class SelfAttention(nn.Module):
    """Multi-head self-attention as diffusers' `Attention` computes it here: q/k/v without bias, output with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        q, k, v = (h.view(batch, -1, self.heads, self.head_dim).transpose(1, 2)
                   for h in (self.to_q(x), self.to_k(x), self.to_v(x)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out[0](out.transpose(1, 2).reshape(batch, -1, self.heads * self.head_dim))


class GELUProjection(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # Index 1 is the training-time dropout slot; Identity keeps the checkpoint's `net.2` numbering.
        self.net = nn.Sequential(GELUProjection(dim, dim * FF_MULT), nn.Identity(), nn.Linear(dim * FF_MULT, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Matcha's BasicTransformerBlock as configured here: pre-norm self-attention, then pre-norm feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), attn_mask)
        return x + self.ff(self.norm3(x))


class TimeFeatures(nn.Module):
    """The sinusoidal time features; a module of its own so exported graphs name its nodes (fp16 keeps them fp32)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_time_features(t, self.dim).to(t.dtype)


class TimestepMLP(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class ConditionalUNet(nn.Module):
    """CFM velocity estimator: (x, mask, mu, t, spks, cond) -> velocity, all channels-first.

    One resolution level: a down block, the mid blocks and an up block fed the down block's output as skip.
    Each block is a causal resnet followed by transformer blocks; the down/up "samplers" are causal convs.
    """

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        in_channels, channels = 4 * cfg.mel_dim, cfg.unet_channels
        time_dim = 4 * channels
        self.static_chunk_size = cfg.static_chunk_size

        def level(dim_in: int, *sampler: nn.Module) -> nn.ModuleList:
            blocks = nn.ModuleList(TransformerBlock(channels, cfg.unet_heads, cfg.unet_head_dim)
                                   for _ in range(cfg.unet_n_blocks))
            return nn.ModuleList([CausalResnetBlock1D(dim_in, channels, time_dim), blocks, *sampler])

        self.time_embeddings = TimeFeatures(in_channels)
        self.time_mlp = TimestepMLP(in_channels, time_dim)
        self.down_blocks = nn.ModuleList([level(in_channels, CausalConv1d(channels, channels, 3))])
        self.mid_blocks = nn.ModuleList(level(channels) for _ in range(cfg.unet_num_mid_blocks))
        self.up_blocks = nn.ModuleList([level(2 * channels, CausalConv1d(channels, channels, 3))])
        self.final_block = CausalBlock1D(channels, channels)
        self.final_proj = nn.Conv1d(channels, cfg.mel_dim, 1)

    def forward(self, x, mask, mu, t, spks, cond, streaming: bool | torch.Tensor = False):
        """x, mu, cond [B, 80, T]; mask [B, 1, T] (1 = valid); t [B]; spks [B, 80] -> [B, 80, T].
        `streaming` (a flag, or a bool tensor in exported graphs) uses the static chunk mask."""
        # Features from float32 times, then the MLP's dtype (a no-op in fp32).
        temb = self.time_mlp(self.time_embeddings(t).to(self.time_mlp.linear_1.weight.dtype))
        h = torch.cat((x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[2]), cond), dim=1)
        attn_mask = streaming_attention_mask(mask[:, 0].bool(), self.static_chunk_size, streaming)

        def run(blocks: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
            h = h.transpose(1, 2)
            for block in blocks:
                h = block(h, attn_mask)
            return h.transpose(1, 2)

        (resnet, blocks, downsample), = self.down_blocks
        skip = run(blocks, resnet(h, mask, temb))
        h = downsample(skip * mask)
        for resnet, blocks in self.mid_blocks:
            h = run(blocks, resnet(h, mask, temb))
        (resnet, blocks, upsample), = self.up_blocks
        h = run(blocks, resnet(torch.cat((h, skip), dim=1), mask, temb))
        h = self.final_block(upsample(h * mask), mask)
        return self.final_proj(h * mask) * mask

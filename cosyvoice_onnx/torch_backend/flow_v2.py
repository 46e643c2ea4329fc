"""CosyVoice2 flow in PyTorch: conformer token encoder and UNet velocity estimator, with CausalFlow's methods."""

from __future__ import annotations

import torch
from torch import nn

from ..config import FlowConfig
from .conformer import UpsampleConformerEncoder
from .flow import project_speaker
from .unet import ConditionalUNet


class ConformerUNetFlow(nn.Module):
    """CausalMaskedDiffWithXvec without its training parts; state_dict matches CosyVoice2's flow.pt."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.encoder_dim)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.mel_dim)
        self.encoder = UpsampleConformerEncoder(cfg)
        self.encoder_proj = nn.Linear(cfg.encoder_dim, cfg.mel_dim)
        # The CFM wrapper has no weights of its own; only its estimator appears in flow.pt.
        self.decoder = nn.ModuleDict({"estimator": ConditionalUNet(cfg)})

    @property
    def estimator(self) -> ConditionalUNet:
        return self.decoder["estimator"]

    def embed_speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        """[1, spk_embed_dim] -> [1, mel_dim]."""
        return project_speaker(self.spk_embed_affine_layer, embedding)

    def encode_tokens(self, tokens: torch.Tensor, finalize: bool, streaming: bool = False) -> torch.Tensor:
        """[1, N] tokens -> mu [1, mel_dim, ratio * N'] with N' = N, or N - lookahead when not finalized (the last
        tokens then only feed the pre-lookahead conv). `streaming` selects the encoder's chunked attention."""
        split = tokens.shape[1] - (0 if finalize else self.cfg.pre_lookahead_len)
        return self.encode(tokens[:, :split], tokens[:, split:], streaming)

    def encode(self, tokens: torch.Tensor, context: torch.Tensor, streaming: bool | torch.Tensor) -> torch.Tensor:
        """tokens [1, N] and the look-ahead tokens after them [1, K] (K = 0 when finalized) -> mu [1, mel_dim, 2N]."""
        h = self.encoder(self.input_embedding(tokens.clamp(min=0)), self.input_embedding(context.clamp(min=0)),
                         streaming)
        return self.encoder_proj(h).transpose(1, 2)

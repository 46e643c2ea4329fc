"""What one synthesis request owns: its randomness (made from its seed), nothing the engine shares."""

from __future__ import annotations

from dataclasses import dataclass

from .config import LLMConfig
from .noise import VocoderNoise
from .sampling import Sampler, make_sampler, resolve_sampler_kind
from .token2wav import Token2Wav


@dataclass
class Randomness:
    """The token sampler and the vocoder noise of one request, both made from its seed.

    Built per request and passed down, so two requests on one engine never draw from each other's streams;
    CV3's fixed noise buffers stay shared (read-only) through `Token2Wav.request_noise`.
    """

    seed: int
    sampler_kind: str            # resolved: "torch", "numpy" or "greedy", never "auto"
    sampler: Sampler
    vocoder_noise: VocoderNoise

    @classmethod
    def create(cls, seed: int, sampler: str, llm: LLMConfig, token2wav: Token2Wav) -> Randomness:
        kind = resolve_sampler_kind(sampler)
        return cls(int(seed), kind, make_sampler(kind, seed, llm), token2wav.request_noise(seed))

"""Speech tokens to waveform through the flow and vocoder stages, whole or streamed (shared by every backend)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .flow_solver import token_to_mel
from .noise import HiftNoise
from .stages import FlowStage, VocoderStage


def interpolate_linear(mel: np.ndarray, size: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode='linear', align_corners=False) over the last axis, in float32."""
    n_in = mel.shape[-1]
    scale = np.float32(n_in) / np.float32(size)
    src = scale * (np.arange(size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = np.float32(1.0) - w1
    return (w0 * mel[..., i0] + w1 * mel[..., i1]).astype(np.float32)


@dataclass
class StreamSchedule:
    """The official chunking: a first hop aligned to 25-token boundaries of prompt+target, then growing hops."""

    token_hop_len: int = 25
    token_max_hop_len: int = 100
    scale_factor: int = 2
    lookahead: int = 3

    def hops(self, prompt_tokens: int) -> Iterator[int]:
        pad = int(np.ceil(prompt_tokens / self.token_hop_len) * self.token_hop_len - prompt_tokens)
        hop = self.token_hop_len
        yield hop + pad
        while True:
            hop = min(self.token_max_hop_len, hop * self.scale_factor)
            yield hop


class Token2Wav:
    """Flow + vocoder over speech tokens, with the fixed noise buffers the official model uses."""

    def __init__(self, cfg: ModelConfig, flow: FlowStage, vocoder: VocoderStage, flow_noise: np.ndarray,
                 hift_noise: HiftNoise):
        self.cfg = cfg
        self.flow = flow
        self.vocoder = vocoder
        self.flow_noise = flow_noise
        self.hift_noise = hift_noise

    def mel(self, tokens: np.ndarray, prompt_tokens: np.ndarray, prompt_mel: np.ndarray, embedding: np.ndarray,
            streaming: bool, finalize: bool) -> np.ndarray:
        return token_to_mel(self.flow, tokens.reshape(1, -1), prompt_tokens.reshape(1, -1), prompt_mel, embedding,
                            self.flow_noise, streaming=streaming, finalize=finalize, cfg=self.cfg.flow)

    def vocode(self, mel: np.ndarray, finalize: bool) -> np.ndarray:
        samples = mel.shape[2] * self.cfg.hift.hop_samples
        return self.vocoder.vocode(mel, finalize, self.hift_noise.sine_noise(samples))

    def whole(self, tokens, prompt_tokens, prompt_mel, embedding, speed: float = 1.0) -> np.ndarray:
        """Non-streaming: full attention, finalize, optional speed change by mel interpolation."""
        mel = self.mel(np.asarray(tokens, dtype=np.int64), prompt_tokens, prompt_mel, embedding,
                       streaming=False, finalize=True)
        if speed != 1.0:
            mel = interpolate_linear(mel, int(mel.shape[2] / speed))
        return self.vocode(mel, finalize=True)[0]

    def stream(self, token_source: Iterable[int], prompt_tokens, prompt_mel, embedding,
               schedule: StreamSchedule | None = None) -> Iterator[np.ndarray]:
        """Yields audio chunks as tokens arrive; the chunks concatenate to the official streaming output.

        Each flow call recomputes prompt+all tokens so far with chunk masks; the causal vocoder runs over the
        accumulated mel and only the new samples are emitted (CV3, spec §6.2/§6.4).
        """
        schedule = schedule or StreamSchedule(self.cfg.streaming.token_hop_len, self.cfg.streaming.token_max_hop_len,
                                              self.cfg.streaming.stream_scale_factor,
                                              self.cfg.streaming.pre_lookahead_len)
        ratio = self.cfg.flow.token_mel_ratio
        tokens: list[int] = []
        offset = 0
        hops = schedule.hops(int(np.asarray(prompt_tokens).size))
        hop = next(hops)
        mel_acc = np.zeros((1, self.cfg.flow.mel_dim, 0), dtype=np.float32)
        emitted = 0

        def run(upto: int, finalize: bool) -> np.ndarray:
            nonlocal mel_acc, emitted
            chunk = np.asarray(tokens[:upto], dtype=np.int64)
            mel = self.mel(chunk, prompt_tokens, prompt_mel, embedding, streaming=not finalize, finalize=finalize)
            mel_acc = np.concatenate([mel_acc, mel[:, :, offset * ratio:]], axis=2)
            speech = self.vocode(mel_acc, finalize=finalize)[0]
            new = speech[emitted:]
            emitted += len(new)
            return new

        for token in token_source:
            tokens.append(int(token))
            if len(tokens) - offset >= hop + schedule.lookahead:
                yield run(offset + hop + schedule.lookahead, finalize=False)
                offset += hop
                hop = next(hops)
        yield run(len(tokens), finalize=True)
